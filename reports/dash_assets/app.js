/* The stability spike dashboard (reports/dashboard.py writes the page, reports/serve.py serves it).
 *
 * One script for both uses: live (JSON from the server, downsampled there for each chart's range
 * and width, the overview polled for new points and runs) and static (the series embedded in the
 * page, downsampled here by the same algorithm as reports/downsample.py). Everything from the
 * store is data: it reaches the DOM through textContent and attribute setters only, never as
 * markup, and no handler is ever written into HTML (the page's CSP forbids them anyway).
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------------------ utilities
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const SCORE = [[252, 251, 253], [188, 189, 220], [117, 107, 177], [63, 0, 125]];
  const STATUS_BG = { diverged: "#f4a6a0", failed: "#c8c8c8", interrupted: "#f7dc9c" };
  const SPIKE_COLOR = "rgba(214,39,40,0.75)";
  const REWIND_COLOR = "rgba(106,61,154,0.9)";  // a spike training went back from (train.on_spike = "rewind")
  const MAX_VALUES = 24000, MIN_SLOTS = 32, MAX_SLOTS = 4000;
  const SUMMARY_LABELS = {
    final_eval_loss: "final eval loss", best_eval_loss: "best eval loss", final_train_loss: "final train loss",
    loss_at_init: "loss at init", max_grad_norm: "max grad norm", max_attn_logit: "max attn logit",
    final_log_z: "final log Z", spike_score_loss: "spike score (loss, %)",
    spike_score_grad_norm: "spike score (grad norm, %)", n_spikes: "spike rows", growth_act: "growth (act)",
    growth_grad: "growth (grad)", diverged_at_step: "diverged at step",
  };

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (/^on/i.test(k)) throw new Error("no inline handlers");
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const on = (el, ev, fn, opts) => { el.addEventListener(ev, fn, opts); return el; };

  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "—";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential((digits || 4) - 1);
    return String(Number(v.toPrecision(digits || 4)));
  }
  const fmtStep = (v) => (v === null || v === undefined ? "—" : String(Math.round(v)));

  function lerp(stops, t) {
    t = Math.max(0, Math.min(1, isFinite(t) ? t : 0));
    const i = Math.min(Math.floor(t * (stops.length - 1)), stops.length - 2);
    const u = t * (stops.length - 1) - i;
    return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * u));
  }
  const rgb = (c, a) => (a === undefined ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${a})`);
  function hexRgb(hex) { const n = parseInt(hex.slice(1), 16); return [n >> 16, (n >> 8) & 255, n & 255]; }
  function alpha(hex, a) { return rgb(hexRgb(hex), a); }
  function shade(hex, k) { // k in [-1, 1]: darker .. lighter
    const c = hexRgb(hex);
    return rgb(c.map((v) => Math.round(k >= 0 ? v + (255 - v) * k : v * (1 + k))));
  }
  const layerColor = (i, n) => rgb(lerp(VIRIDIS, n > 1 ? (i / (n - 1)) * 0.9 : 0));

  function lowerBound(a, v) { let lo = 0, hi = a.length; while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < v) lo = m + 1; else hi = m; } return lo; }
  function upperBound(a, v) { let lo = 0, hi = a.length; while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] <= v) lo = m + 1; else hi = m; } return lo; }
  const enc = encodeURIComponent;

  // ------------------------------------------------------------------------------ downsampling
  // The same algorithm as reports/downsample.py (the static page's server).
  function slotsFor(traces, px) {
    const arrays = traces.reduce((n, t) => n + (t.group ? 3 : 1), 0) || 1;
    let n = Math.min(px | 0, Math.floor(MAX_VALUES / arrays), MAX_SLOTS);
    n -= n % 2;
    return Math.max(MIN_SLOTS, n);
  }
  function cut(x, y, x0, x1) { const a = lowerBound(x, x0), b = upperBound(x, x1); return [x.subarray(a, b), y.subarray(a, b)]; }
  function band(rows, n) {
    const y = new Array(n).fill(null), lo = new Array(n).fill(null), hi = new Array(n).fill(null);
    for (let j = 0; j < n; j++) {
      let s = 0, c = 0, mn = Infinity, mx = -Infinity;
      for (const r of rows) { const v = r[j]; if (isFinite(v)) { s += v; c++; if (v < mn) mn = v; if (v > mx) mx = v; } }
      if (c) { y[j] = s / c; lo[j] = mn; hi[j] = mx; }
    }
    return { y, lo, hi };
  }
  function assemble(traces, x0, x1, px) {
    const slots = slotsFor(traces, px);
    const parts = traces.map((t) => t.parts.map(([x, y]) => cut(x, y, x0, x1)));
    const maxCount = Math.max(0, ...parts.flat().map((p) => p[0].length));
    if (maxCount <= slots) {
      const set = new Set();
      for (const p of parts.flat()) for (const v of p[0]) set.add(v);
      if (set.size <= slots) {
        const union = Float64Array.from(set).sort();
        const out = traces.map((t, i) => {
          const rows = parts[i].map(([x, y]) => {
            const r = new Float64Array(union.length).fill(NaN);
            for (let k = 0; k < x.length; k++) r[lowerBound(union, x[k])] = isFinite(y[k]) ? y[k] : NaN;
            return r;
          });
          if (t.group) return band(rows, union.length);
          const r = rows[0];
          return { y: r ? Array.from(r, (v) => (isFinite(v) ? v : null)) : new Array(union.length).fill(null) };
        });
        return { x0, x1, raw: true, bucket: 1, x: Array.from(union), traces: out };
      }
    }
    const half = Math.max(x1 - x0, 1e-9) / slots;
    const xs = Array.from({ length: slots }, (_, i) => x0 + half * (i + 0.5));
    const slotOf = (v) => Math.min(slots - 1, Math.max(0, Math.floor((v - x0) / half)));
    const out = traces.map((t, i) => {
      if (t.group) {
        const rows = parts[i].map(([x, y]) => {
          const sum = new Float64Array(slots), cnt = new Float64Array(slots);
          for (let k = 0; k < x.length; k++) if (isFinite(y[k])) { const s = slotOf(x[k]); sum[s] += y[k]; cnt[s]++; }
          return Array.from(sum, (s, j) => (cnt[j] ? s / cnt[j] : NaN));
        });
        return band(rows, slots);
      }
      const y = new Array(slots).fill(null);
      const p = parts[i][0];
      if (p) {
        const [x, v] = p;
        let k = 0;
        while (k < x.length) {
          const b = slotOf(x[k]) >> 1;
          let mn = Infinity, mx = -Infinity, imn = -1, imx = -1;
          for (; k < x.length && (slotOf(x[k]) >> 1) === b; k++) {
            const w = v[k];
            if (!isFinite(w)) continue;
            if (w < mn) { mn = w; imn = k; }
            if (w > mx) { mx = w; imx = k; }
          }
          if (imn >= 0) {
            const loFirst = imn <= imx;
            y[2 * b] = loFirst ? mn : mx;
            y[2 * b + 1] = loFirst ? mx : mn;
          }
        }
      }
      return { y };
    });
    return { x0, x1, raw: false, bucket: 2 * half, x: xs, traces: out };
  }

  // ------------------------------------------------------------------------------ data sources
  class LiveSource {
    constructor(pollS) { this.pollS = pollS; this.live = true; }
    async overview(version) {
      const r = await fetch("api/overview" + (version ? "?v=" + enc(version) : ""), { cache: "no-store" });
      if (!r.ok) throw new Error("overview: HTTP " + r.status);
      return r.json();
    }
    async chart(q) {
      const r = await fetch("api/chart?q=" + enc(JSON.stringify(q)), { cache: "no-store" });
      if (!r.ok) throw new Error("chart: HTTP " + r.status + " " + (await r.text()));
      return r.json();
    }
  }

  class StaticSource {
    constructor(data) {
      this.live = false;
      this.ov = data.overview;
      // each series: base64 of little-endian int32 (or float64) steps and float32 values
      const bytes = (b64) => { const bin = atob(b64), out = new Uint8Array(bin.length); for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i); return out.buffer; };
      const steps = (b64, kind) => (kind === "f8" ? new Float64Array(bytes(b64)) : new Int32Array(bytes(b64)));
      this.series = new Map();
      this.windows = new Map();
      for (const [run, metric, x, y, kind] of data.series) this.series.set(run + "\u0000" + metric, [steps(x, kind), new Float32Array(bytes(y))]);
      for (const [run, metric, x, y, kind] of data.windows) {
        const k = run + "\u0000" + metric;
        if (!this.windows.has(k)) this.windows.set(k, []);
        this.windows.get(k).push([steps(x, kind), new Float32Array(bytes(y))]);
      }
    }
    async overview() { return this.ov; }
    piece(run, metric, x0, x1) {
      const k = run + "\u0000" + metric;
      for (const w of this.windows.get(k) || []) if (w[0].length && w[0][0] <= x0 && w[0][w[0].length - 1] >= x1) return w;
      return this.series.get(k);
    }
    async chart(q) {
      const traces = q.traces.map((t) => ({
        group: !!t.group, parts: t.runs.map((r) => this.piece(r, t.metric, q.x0, q.x1)).filter(Boolean),
      }));
      return assemble(traces, q.x0, q.x1, q.px);
    }
  }

  // ------------------------------------------------------------------------------ state
  const S = {
    source: null, ov: null, version: 0, view: null,
    ws: { metrics: null, layers: {}, mode: null, runs: null, smooth: 0, log: {} },
    spikeFilter: { arm: "", rule: "", layer: "", text: "" },
    spikeWindow: null,
  };
  const DASH = (window.__dash = {
    ready: false, route: null, firstChart: null, version: 0, errors: [],
    hover: { event: 0, done: 0, painted: 0 },
    panels: () => (S.view ? S.view.panels().map((p) => p.info()) : []),
    // where a step is on the i-th chart, in viewport pixels (scrolled into view): for tests and benchmarks
    point: (i, step, frac) => {
      const p = S.view.panels()[i];
      p.el.scrollIntoView({ block: "center" });
      const r = p.u.over.getBoundingClientRect();
      return { x: r.left + p.u.valToPos(step, "x"), y: r.top + r.height * (frac === undefined ? 0.5 : frac) };
    },
  });
  on(document, "mousemove", (e) => { DASH.hover.event = e.timeStamp; }, { capture: true, passive: true });

  const runById = () => new Map(S.ov.runs.map((r) => [r.id, r]));
  function armColor(arm) {
    const i = S.ov.arms.indexOf(arm);
    if (i >= 0) return PALETTE[i % PALETTE.length];
    let hsh = 0;
    for (const ch of String(arm)) hsh = (hsh * 31 + ch.charCodeAt(0)) | 0;
    return PALETTE[Math.abs(hsh) % PALETTE.length];
  }
  function runColor(run) {
    if (!S.ov.is_grid) return PALETTE[S.ov.runs.indexOf(run) % PALETTE.length];
    const same = S.ov.runs.filter((r) => r.arm === run.arm);
    const i = same.indexOf(run), n = same.length;
    return shade(armColor(run.arm), n > 1 ? -0.35 + (0.7 * i) / (n - 1) : 0);
  }
  function entryOf(metric) { return S.ov.metrics.find((m) => m.key === metric); }
  const layerKey = (prefix, i) => `${prefix}/layer_${i}`;
  const isLogDefault = (metric) => /^grad\/norm/.test(metric);

  // ------------------------------------------------------------------------------ chart panel
  class Linker {
    // Charts whose x axes move together: a zoom or pan on one sets the others and refetches all.
    constructor(full) { this.full = full; this.range = null; this.panels = []; this.key = "x" + Math.random(); this._t = 0; }
    current() { return this.range || this.full; }
    zoom(src, min, max) {
      if (!(max > min)) return;
      this.range = [min, max];
      for (const p of this.panels) if (p !== src) p.setRange(min, max);
      clearTimeout(this._t);
      this._t = setTimeout(() => this.panels.forEach((p) => p.load()), 120);
    }
    reset() {
      this.range = null;
      for (const p of this.panels) p.setRange(...this.full);
      this.panels.forEach((p) => p.load());
    }
  }

  class Panel {
    // One uPlot chart: traces (a run's series or a group's band), spike markers, a readout.
    constructor(linker, spec) {
      this.linker = linker; this.spec = spec; this.u = null; this.cols = null; this.seq = 0;
      this.map = []; this.rows = [];
      this.plot = h("div", { class: "plot" });
      this.readHead = h("div", { class: "readout-head", text: "hover a chart for values" });
      this.readBody = h("tbody");
      this.status = h("span", { class: "chart-status" });
      this.el = h("div", { class: "chart" + (spec.small ? " small" : ""), "data-key": spec.key },
        h("div", { class: "chart-head" }, h("span", { class: "chart-title", text: spec.title, title: spec.what || null }), this.status,
          spec.controls || null),
        this.plot, h("div", { class: "readout" }, this.readHead, h("table", {}, this.readBody)));
      linker.panels.push(this);
    }
    width() { return Math.max(200, (this.el.clientWidth || 600) - 4); }
    async load() {
      const seq = ++this.seq;
      const [x0, x1] = this.linker.current();
      const q = {
        x0, x1, px: Math.max(64, Math.round(this.width() - 70)),
        traces: this.spec.traces.map((t) => ({ runs: t.runs, metric: t.metric, group: !!t.group })),
      };
      let cols;
      try { cols = await S.source.chart(q); } catch (e) { this.status.textContent = " (" + e.message + ")"; DASH.errors.push(String(e)); return; }
      if (seq !== this.seq || !this.el.isConnected) return;
      this.cols = cols;
      this.status.textContent = cols.raw ? "" : ` · ${fmt(cols.bucket, 3)} steps per bucket (min–max)`;
      this.draw();
    }
    series() {
      // uPlot columns from the chart answer: smoothing, log, bands; `map` finds each trace's columns.
      const cols = this.cols, log = this.spec.log, sm = S.ws.smooth;
      const ref = Math.max(1, (this.linker.full[1] - this.linker.full[0]) / 500);
      const prep = (a) => (log ? a.map((v) => (v !== null && v > 0 ? v : null)) : a);
      const smooth = (a) => (sm > 0 ? ema(cols.x, a, sm, ref) : a);
      const data = [cols.x], series = [{ label: "step" }], bands = [];
      this.map = [];
      const push = (arr, s) => { data.push(arr); series.push(s); return data.length - 1; };
      this.spec.traces.forEach((t, i) => {
        const c = cols.traces[i];
        if (!c) return;
        const m = { t };
        const width = t.width || (t.group ? 2 : 1.4);
        if (t.group) {
          m.hi = push(prep(smooth(c.hi)), { stroke: alpha(t.color, 0.25), width: 0.5, points: { show: false }, spanGaps: true });
          m.lo = push(prep(smooth(c.lo)), { stroke: alpha(t.color, 0.25), width: 0.5, points: { show: false }, spanGaps: true });
          bands.push({ series: [m.hi, m.lo], fill: alpha(t.color, 0.14) });
        }
        if (sm > 0) m.raw = push(prep(c.y), { stroke: alpha(t.color, 0.22), width: 1, points: { show: false }, spanGaps: true });
        m.y = push(prep(smooth(c.y)), { label: t.label, stroke: t.color, width, spanGaps: true, dash: t.dash });
        this.map.push(m);
      });
      return { data, series, bands };
    }
    draw() {
      const { data, series, bands } = this.series();
      const sig = series.length + ":" + this.spec.log + ":" + bands.length;
      if (this.u && this.sig === sig) {
        this.u.setData(data, false);
        this.u.setScale("x", { min: this.linker.current()[0], max: this.linker.current()[1] });
      } else {
        if (this.u) this.u.destroy();
        this.sig = sig;
        this.u = new uPlot(this.options(series, bands), data, this.plot);
        this.u.setScale("x", { min: this.linker.current()[0], max: this.linker.current()[1] });
        this.buildReadout();
        if (DASH.firstChart === null) { DASH.firstChart = performance.now(); performance.mark("dash:first-chart"); }
      }
      this.el.setAttribute("data-xmin", this.u.scales.x.min);
      this.el.setAttribute("data-xmax", this.u.scales.x.max);
      this.el.setAttribute("data-raw", this.cols.raw ? "1" : "0");
    }
    options(series, bands) {
      const self = this;
      let down = null, pan = null;
      return {
        width: this.width(), height: this.spec.height || (this.spec.small ? 170 : 230),
        legend: { show: false },
        scales: { x: { time: false }, y: this.spec.log ? { distr: 3, log: 10 } : { auto: true } },
        axes: [
          { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, values: (u, v) => v.map(tick) },
          { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: 58, values: (u, v) => v.map(tick) },
        ],
        series, bands,
        cursor: {
          sync: { key: this.linker.key, setSeries: false },
          y: false, // the charts' y scales differ: a synced horizontal line would mean nothing
          drag: { x: true, y: false, setScale: false }, // setSelect below zooms every linked chart
          points: { show: false },
          bind: {
            dblclick: () => () => { self.linker.reset(); return null; },
            mousedown: (u, targ, handler) => (e) => {
              down = [e.clientX, e.clientY];
              if (e.shiftKey && e.button === 0) {
                pan = { x: e.clientX, min: u.scales.x.min, max: u.scales.x.max };
                const move = (ev) => {
                  const dx = ((ev.clientX - pan.x) / u.over.clientWidth) * (pan.max - pan.min);
                  self.linker.zoom(null, pan.min - dx, pan.max - dx);
                };
                const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); pan = null; };
                window.addEventListener("mousemove", move);
                window.addEventListener("mouseup", up);
                return null;
              }
              handler(e);
              return null;
            },
          },
        },
        hooks: {
          // only gestures move the linked range (uPlot also sets scales itself, e.g. while it is built)
          setSelect: [(u) => {
            const { left, width } = u.select;
            if (width < 3) return;
            const min = u.posToVal(left, "x"), max = u.posToVal(left + width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            self.linker.zoom(null, min, max);
          }],
          setCursor: [(u) => self.readout(u)],
          draw: [(u) => self.drawMarkers(u)],
          ready: [(u) => on(u.over, "click", (e) => {
            const moved = down && Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 3;
            const m = moved ? null : self.markerAt(e.offsetX);
            if (m && m.ev) location.hash = spikeHash(m.ev);
          }), (u) => on(u.over, "wheel", (e) => {
            if (!(e.altKey || e.ctrlKey)) return;
            e.preventDefault();
            const at = u.posToVal(e.offsetX, "x"), k = e.deltaY > 0 ? 1.3 : 1 / 1.3;
            self.linker.zoom(null, at - (at - u.scales.x.min) * k, at + (u.scales.x.max - at) * k);
          }, { passive: false })],
        },
      };
    }
    setRange(min, max) {
      if (!this.u) return;
      this.u.setScale("x", { min, max });
      this.el.setAttribute("data-xmin", min);
      this.el.setAttribute("data-xmax", max);
    }
    markerAt(offsetX) {
      if (!this.u) return null;
      let best = null, dist = 6;
      for (const m of this.spec.markers || []) {
        const d = Math.abs(this.u.valToPos(m.x, "x") - offsetX);
        if (d <= dist) { best = m; dist = d; }
      }
      return best;
    }
    drawMarkers(u) {
      const ctx = u.ctx, { left, top, width, height } = u.bbox;
      const [mn, mx] = [u.scales.x.min, u.scales.x.max];
      ctx.save();
      for (const m of this.spec.markers || []) {
        if (m.x < mn || m.x > mx) continue;
        const cx = Math.round(u.valToPos(m.x, "x", true)) + 0.5;
        ctx.strokeStyle = m.kind === "diverged" ? "#000" : m.kind === "rewind" ? REWIND_COLOR : SPIKE_COLOR;
        ctx.lineWidth = m.kind === "spike" ? 1 : 1.5;
        ctx.setLineDash(m.kind === "diverged" ? [6, 4] : m.kind === "rewind" ? [2, 3] : []);
        ctx.beginPath(); ctx.moveTo(cx, top); ctx.lineTo(cx, top + height); ctx.stroke();
        ctx.fillStyle = ctx.strokeStyle;
        ctx.setLineDash([]);
        ctx.beginPath(); ctx.moveTo(cx - 5, top); ctx.lineTo(cx + 5, top); ctx.lineTo(cx, top + 8); ctx.fill();
      }
      ctx.restore();
      void left; void width;
    }
    buildReadout() {
      this.readBody.textContent = "";
      this.rows = this.map.map((m) => {
        const val = h("td", { class: "num" }), extra = h("td", { class: "num dim" });
        this.readBody.appendChild(h("tr", {}, h("td", {}, h("i", { class: "sw" })), h("td", { class: "lbl", text: m.t.label }), val, extra));
        this.readBody.lastChild.querySelector(".sw").style.background = m.t.color;
        return { val, extra };
      });
    }
    readout(u) {
      const idx = u.cursor.idx;
      if (idx === null || idx === undefined || !this.cols) { this.readHead.textContent = "hover a chart for values"; return; }
      const x = u.data[0][idx];
      let head;
      if (this.cols.raw) head = "step " + fmtStep(x);
      else {
        const b = this.cols.bucket, k = Math.floor((x - this.cols.x0) / b), a = this.cols.x0 + k * b;
        head = `steps ${fmtStep(a)}–${fmtStep(a + b)} (bucket min/max)`;
      }
      const m = this.markerAt(u.cursor.left);
      if (m && m.ev) head += ` · ⚑ spike @ ${m.ev.step}: ${m.label}`;
      else if (m) head += " · " + m.label;
      this.readHead.textContent = head;
      this.map.forEach((mm, i) => {
        const row = this.rows[i];
        const j = nearest(u.data[mm.y], idx);
        row.val.textContent = j === null ? "—" : fmt(u.data[mm.y][j], 5);
        const parts = [];
        if (mm.lo !== undefined && j !== null) parts.push(`[${fmt(u.data[mm.lo][j], 4)}, ${fmt(u.data[mm.hi][j], 4)}]`);
        if (mm.raw !== undefined && j !== null) parts.push("raw " + fmt(u.data[mm.raw][j], 5));
        if (j !== null && j !== idx && this.cols.raw) parts.push("@ step " + fmtStep(u.data[0][j])); // a sparser series
        row.extra.textContent = parts.join(" ");
      });
      DASH.hover.done = performance.now();
      requestAnimationFrame(() => { DASH.hover.painted = performance.now(); });
    }
    resize() { if (this.u) this.u.setSize({ width: this.width(), height: this.u.height }); }
    info() {
      const u = this.u;
      return {
        key: this.spec.key, title: this.spec.title, metrics: [...new Set(this.spec.traces.map((t) => t.metric))],
        log: !!this.spec.log, traces: this.spec.traces.length, series: u ? u.series.length - 1 : 0,
        xmin: u ? u.scales.x.min : null, xmax: u ? u.scales.x.max : null, raw: this.cols ? this.cols.raw : null,
        points: u ? u.data[0].length : 0, markers: (this.spec.markers || []).length,
        readout: [this.readHead.textContent, ...this.rows.map((r, i) => `${this.map[i].t.label}=${r.val.textContent}`)],
        values: u ? this.map.map((m) => u.data[m.y]) : [], x: u ? Array.from(u.data[0]) : [],
      };
    }
    destroy() { this.seq++; if (this.u) this.u.destroy(); this.u = null; this.el.remove(); }
  }

  function nearest(col, idx) {
    if (!col) return null;
    for (let d = 0; d < 64; d++) {
      if (idx - d >= 0 && col[idx - d] !== null && col[idx - d] !== undefined) return idx - d;
      if (idx + d < col.length && col[idx + d] !== null && col[idx + d] !== undefined) return idx + d;
    }
    return null;
  }
  function ema(x, y, s, ref) {
    // Debiased EMA that decays per step, not per point, so a zoomed view smooths like the full one.
    const out = new Array(y.length).fill(null);
    let acc = 0, norm = 0, last = null;
    for (let i = 0; i < y.length; i++) {
      const v = y[i];
      if (v === null || v === undefined || !isFinite(v)) continue;
      const w = last === null ? 0 : Math.pow(s, (x[i] - last) / ref);
      acc = w * acc + (1 - w) * v; norm = w * norm + (1 - w); last = x[i];
      out[i] = acc / norm;
    }
    return out;
  }
  function tick(v) {
    if (v === null) return "";
    const a = Math.abs(v);
    if (a >= 1e4 && a < 1e9 && Number.isInteger(v)) return a >= 1e6 ? v / 1e6 + "M" : v / 1e3 + "k";
    return fmt(v, 3);
  }

  // ------------------------------------------------------------------------------ heatmap
  class Heatmap {
    // Layers x steps of one per-layer metric of a run, log colour scale shared by all layers.
    constructor(linker, { title, run, prefix, layers, markers }) {
      this.linker = linker; this.run = run; this.prefix = prefix; this.layers = layers; this.markers = markers || [];
      this.canvas = h("canvas", { class: "heat" });
      this.infoEl = h("div", { class: "readout-head", text: "hover the heatmap for values" });
      this.el = h("div", { class: "chart heatmap" }, h("div", { class: "chart-head" }, h("span", { class: "chart-title", text: title })),
        this.canvas, this.infoEl);
      on(this.canvas, "mousemove", (e) => this.hover(e));
      on(this.canvas, "click", (e) => {
        const m = this.markerAt(e.offsetX);
        if (m && m.ev) location.hash = spikeHash(m.ev);
      });
      linker.panels.push(this);
      this.seq = 0;
    }
    setRange() {} // the linker reloads every panel once the zoom settles
    async load() {
      const seq = ++this.seq, [x0, x1] = this.linker.current();
      const width = Math.max(200, this.el.clientWidth - 4 || 600);
      const q = { x0, x1, px: Math.max(64, Math.round((width - 60) / 2)), traces: this.layers.map((l) => ({ runs: [this.run], metric: layerKey(this.prefix, l) })) };
      const cols = await S.source.chart(q);
      if (seq !== this.seq || !this.el.isConnected) return;
      this.cols = cols;
      this.paint(width);
    }
    paint(width) {
      const cols = this.cols, rowH = Math.max(10, Math.min(24, Math.floor(180 / this.layers.length)));
      const left = 60, n = cols.x.length, height = rowH * this.layers.length + 18;
      const c = this.canvas;
      c.width = width; c.height = height; c.style.width = width + "px"; c.style.height = height + "px";
      const ctx = c.getContext("2d");
      let lo = Infinity, hi = -Infinity;
      for (const t of cols.traces) for (const v of t.y) if (v !== null && v > 0) { lo = Math.min(lo, Math.log10(v)); hi = Math.max(hi, Math.log10(v)); }
      this.scale = [lo, hi];
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
      const [x0, x1] = [cols.x0, cols.x1], pw = width - left - 4;
      this.geom = { left, pw, rowH, x0, x1 };
      const step = cols.raw ? 1 : 2;
      cols.traces.forEach((t, li) => {
        for (let j = 0; j < n; j += step) {
          let v = t.y[j];
          if (!cols.raw) { const w = t.y[j + 1]; v = v === null ? w : w === null ? v : Math.max(v, w); }
          if (v === null || !(v > 0)) continue;
          // raw: a cell reaches half-way to its neighbours (probes log every few steps)
          const prev = j > 0 ? cols.x[j - 1] : cols.x[j] - (n > 1 ? cols.x[1] - cols.x[0] : 1);
          const next = j < n - 1 ? cols.x[j + 1] : cols.x[j] + (n > 1 ? cols.x[n - 1] - cols.x[n - 2] : 1);
          const xa = cols.raw ? (prev + cols.x[j]) / 2 : cols.x0 + (j / 2) * cols.bucket;
          const xb = cols.raw ? (cols.x[j] + next) / 2 : xa + cols.bucket;
          const pa = left + ((xa - x0) / (x1 - x0)) * pw, pb = left + ((xb - x0) / (x1 - x0)) * pw;
          ctx.fillStyle = rgb(lerp(VIRIDIS, hi > lo ? (Math.log10(v) - lo) / (hi - lo) : 0.5));
          ctx.fillRect(Math.floor(pa), li * rowH, Math.max(1, Math.ceil(pb - pa)), rowH - 1);
        }
        ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
        ctx.fillText("layer " + this.layers[li], 4, li * rowH + rowH / 2);
      });
      ctx.fillStyle = "#555"; ctx.textBaseline = "top";
      ctx.fillText(fmtStep(x0), left, rowH * this.layers.length + 3);
      const endLabel = fmtStep(x1);
      ctx.fillText(endLabel, left + pw - ctx.measureText(endLabel).width, rowH * this.layers.length + 3);
      for (const m of this.markers) {
        if (m.x < x0 || m.x > x1) continue;
        const px = left + ((m.x - x0) / (x1 - x0)) * pw;
        ctx.strokeStyle = m.kind === "diverged" ? "#000" : "rgba(255,255,255,0.9)";
        ctx.beginPath(); ctx.moveTo(px + 0.5, 0); ctx.lineTo(px + 0.5, rowH * this.layers.length); ctx.stroke();
      }
    }
    markerAt(offsetX) {
      if (!this.geom) return null;
      const { left, pw, x0, x1 } = this.geom;
      let best = null, dist = 5;
      for (const m of this.markers) { const d = Math.abs(left + ((m.x - x0) / (x1 - x0)) * pw - offsetX); if (d <= dist) { best = m; dist = d; } }
      return best;
    }
    hover(e) {
      if (!this.geom || !this.cols) return;
      const { left, pw, rowH, x0, x1 } = this.geom;
      const li = Math.floor(e.offsetY / rowH), step = x0 + ((e.offsetX - left) / pw) * (x1 - x0);
      if (li < 0 || li >= this.layers.length || e.offsetX < left) { this.infoEl.textContent = "hover the heatmap for values"; return; }
      const xs = this.cols.x, j = Math.min(xs.length - 1, lowerBound(xs, step));
      const k = nearest(this.cols.traces[li].y, j);
      const v = k === null ? null : this.cols.traces[li].y[k];
      this.infoEl.textContent = `layer ${this.layers[li]} · step ${fmtStep(k === null ? step : xs[k])}: ${fmt(v, 5)} (colour: log10 from ${fmt(this.scale[0], 3)} to ${fmt(this.scale[1], 3)})`;
    }
    resize() { if (this.cols) this.paint(Math.max(200, this.el.clientWidth - 4)); }
    info() { return { key: "heatmap:" + this.prefix, title: "heatmap", metrics: [this.prefix], heat: true, loaded: !!this.cols }; }
    destroy() { this.seq++; this.el.remove(); }
  }

  // ------------------------------------------------------------------------------ shared pieces
  function eventLabel(ev) {
    return ev.rules.map((r) => `${r.metric}@${r.rule || "?"} ${fmt(r.sigma, 3)}σ`).join(", ") +
      (ev.leading_layer !== null ? ` · lead layer ${ev.leading_layer}` : "");
  }
  // what came before a loss spike (reports.leadlag, computed by the server): null for other events
  function precursorText(ev) {
    if (!ev.precursors) return "—";
    if (!ev.precursors.length) return "none left its range";
    return ev.precursors.map((p) => `${p.signal}${p.layer !== null ? " layer " + p.layer : ""}, ${p.lead} step${p.lead === 1 ? "" : "s"} before` +
      (p.cadence > 1 ? ` (sampled every ${p.cadence})` : "")).join("; ");
  }
  const spikeHash = (ev) => `#/spike/${enc(ev.run)}/${ev.step}`;
  const runHash = (id) => `#/run/${enc(id)}`;
  function markersFor(runIds) {
    const ids = new Set(runIds), byId = runById(), out = [];
    for (const ev of S.ov.events) if (ids.has(ev.run)) out.push({ x: ev.step, kind: ev.rewound ? "rewind" : "spike", ev, label: `${(byId.get(ev.run) || {}).name || ev.run}: ${ev.rewound ? "rewound from " : ""}${eventLabel(ev)}` });
    for (const id of ids) { const r = byId.get(id); if (r && r.diverged_at !== null && r.status === "diverged") out.push({ x: r.diverged_at, kind: "diverged", label: `${r.name} diverged at step ${r.diverged_at}` }); }
    return out;
  }

  function header(subtitle) {
    const ov = S.ov;
    const counts = Object.entries(ov.statuses).map(([s, n]) => `${s} ${n}`).join(" · ");
    const live = S.source.live
      ? h("span", { class: "live" + (ov.live ? " on" : ""), id: "live", text: ov.live ? `live · checking every ${fmt(S.source.pollS)} s` : `watching the store every ${fmt(S.source.pollS)} s` })
      : h("span", { class: "static", text: "static export" });
    return h("header", {},
      h("nav", {}, h("a", { href: "#/", text: "overview" }), h("a", { href: "#/spikes", text: `spikes (${ov.events.length})` }), live),
      h("h1", { text: subtitle || ov.name }),
      h("p", { class: "meta", text: `${ov.is_grid ? "grid" : "experiment"} ${ov.name} · baseline ${ov.baseline || "—"} · runs ${ov.runs.length} · ${counts || "no runs"} · data as of ${ov.generated}` }));
  }

  function table(head, rows, cls) {
    return h("table", { class: cls || "" }, h("thead", {}, h("tr", {}, head.map((c) => h("th", { text: c })))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c)))))));
  }
  const num = (v, d) => h("td", { class: "num", text: fmt(v, d) });

  function scoreColor(score, vmax) {
    const t = !isFinite(score) || score === null || vmax <= 0 ? 0 : Math.max(0, Math.min(1, score / vmax));
    return [rgb(lerp(SCORE, t)), t > 0.55 ? "#fff" : "#222"];
  }

  // ------------------------------------------------------------------------------ overview
  function matrix() {
    const ov = S.ov, runs = ov.runs;
    const scores = runs.map((r) => r.summary.spike_score_grad_norm).filter((v) => typeof v === "number");
    const vmax = scores.length ? Math.max(...scores) : 0;
    const cell = (r) => {
      const [bg, fg] = STATUS_BG[r.status] ? [STATUS_BG[r.status], "#222"] : scoreColor(r.summary.spike_score_grad_norm, vmax);
      const a = h("a", { class: `cell st-${r.status}`, href: runHash(r.id), title: r.name },
        h("span", { class: "st", text: r.status_text }), h("span", { text: `eval ${fmt(r.summary.final_eval_loss)}` }),
        h("span", { text: `spike score ${fmt(r.summary.spike_score_grad_norm, 3)} · ${r.n_events} ev` }));
      a.style.background = bg; a.style.color = fg;
      return a;
    };
    const out = h("section", { class: "matrix-wrap" });
    if (!ov.is_grid) {
      out.appendChild(h("h2", { text: "runs" }));
      out.appendChild(table(["run", "status", "seed", "lr", "last step", "final eval loss", "spike score (grad norm)", "spike events"],
        runs.map((r) => [h("a", { href: runHash(r.id), text: r.name }), r.status_text, fmt(r.seed), fmt(r.lr), num(r.last_step), num(r.summary.final_eval_loss), num(r.summary.spike_score_grad_norm, 3), num(r.n_events)]), "runs"));
      return out;
    }
    const several = ov.lrs.length > 1;
    const blocks = several ? [...ov.lrs.map((lr) => [lr, runs.filter((r) => r.lr === lr)]), [null, runs.filter((r) => r.lr === null)]]
      : [[ov.lrs[0] === undefined ? null : ov.lrs[0], runs]];
    for (const [lr, sub] of blocks) {
      if (!sub.length) continue;
      const seeds = [...new Set(sub.map((r) => r.seed))].sort((a, b) => (a === null) - (b === null) || a - b);
      const arms = [...new Set(sub.map((r) => r.arm))].sort((a, b) => ov.arms.indexOf(a) - ov.arms.indexOf(b));
      out.appendChild(h("h2", { text: several ? `lr = ${fmt(lr)}` : `arms × seeds${lr !== null ? ` (lr ${fmt(lr)})` : ""}` }));
      const rows = arms.map((arm) => {
        const th = h("th", {}, h("i", { class: "sw" }), arm, arm === ov.baseline ? h("em", { text: " (baseline)" }) : null);
        th.querySelector(".sw").style.background = armColor(arm);
        return h("tr", {}, th, seeds.map((seed) => {
          const hit = sub.filter((r) => r.arm === arm && r.seed === seed);
          return h("td", { class: hit.length ? "" : "empty" }, hit.map(cell));
        }));
      });
      out.appendChild(h("table", { class: "matrix" }, h("thead", {}, h("tr", {}, h("th", { text: "arm \\ seed" }), seeds.map((s) => h("th", { text: `seed ${fmt(s)}` })))), h("tbody", {}, rows)));
    }
    const legend = h("p", { class: "legend" }, h("b", { text: "colour: grad-norm spike score (%) " }));
    for (const t of [0, vmax / 2, vmax]) { const sw = h("i", { class: "sw" }); sw.style.background = scoreColor(t, vmax)[0]; legend.appendChild(h("span", {}, sw, fmt(t, 3))); }
    for (const [s, c] of Object.entries(STATUS_BG)) { const sw = h("i", { class: "sw" }); sw.style.background = c; legend.appendChild(h("span", {}, sw, s)); }
    legend.appendChild(h("span", { text: "dashed: running" }));
    out.appendChild(legend);
    return out;
  }

  function compareSection() {
    const cmp = S.ov.compare;
    if (!cmp) return null;
    const show = ["final_eval_loss", "spike_score_loss", "spike_score_grad_norm", "max_attn_logit", "max_grad_norm", "diverged_at_step"].filter((m) => cmp.metrics.includes(m));
    const lrs = [...new Set(cmp.rows.map((r) => r.lr))];
    const arms = [...new Set(cmp.rows.map((r) => r.arm))];
    const rows = [];
    for (const arm of arms) for (const lr of lrs) {
      const cells = show.map((m) => {
        const r = cmp.rows.find((x) => x.arm === arm && x.lr === lr && x.metric === m);
        if (!r) return h("td", { class: "empty" });
        const ci = r.ci_low !== null ? ` [${fmt(r.ci_low, 3)}, ${fmt(r.ci_high, 3)}]` : "";
        let cls = "";
        if (r.direction && r.ci_low !== null && (r.ci_low > 0 || r.ci_high < 0)) {
          const up = r.ci_low > 0;
          cls = (r.direction === "lower") !== up ? "better" : "worse";
        }
        const counts = r.n_better !== null ? ` · ${r.n_better}/${r.n_ties}/${r.n_worse}` : "";
        return h("td", { class: "num " + cls, title: r.note || "" }, h("div", { text: fmt(r.mean_diff, 3) + ci }),
          h("div", { class: "dim", text: `n ${r.n_pairs}${counts}${r.p_holm !== null ? " · p " + fmt(r.p_holm, 2) : ""}` }));
      });
      rows.push(h("tr", {}, h("th", { text: lrs.length > 1 ? `${arm} @ ${fmt(lr)}` : arm }), cells));
    }
    return h("section", { class: "compare" }, h("h2", { text: `paired differences vs ${S.ov.baseline} (arm − baseline, per seed)` }),
      h("table", { class: "cmp" }, h("thead", {}, h("tr", {}, h("th", { text: "arm" }), show.map((m) => h("th", { text: SUMMARY_LABELS[m] || m })))), h("tbody", {}, rows)),
      h("p", { class: "note", text: `mean difference [${cmp.test === "wilcoxon" ? "bootstrap" : ""} 95% CI, ${cmp.n_boot} resamples] · n pairs · seeds better/tied/worse · Holm-adjusted ${cmp.test} p (as in stability report). Green: the CI excludes 0 on the better side.${cmp.too_few ? " Too few seeds for a p-value in some rows (Wilcoxon needs ≥ 6 pairs)." : ""}` }));
  }

  // the workspace: overlay runs or arm bands of chosen metrics
  function wsDefaults() {
    const ws = S.ws, ov = S.ov;
    if (!ws.mode) ws.mode = ov.default_mode;
    if (!ws.metrics) {
      const have = new Set(ov.metrics.map((m) => m.key));
      ws.metrics = [...ov.headline, "attn/logit_max"].filter((k) => have.has(k));
      if (!ws.metrics.length && ov.metrics.length) ws.metrics = [ov.metrics[0].key];
    }
  }
  function wsFromHash(params) {
    if (params.has("m")) S.ws.metrics = params.get("m").split(",").filter(Boolean);
    if (params.has("mode")) S.ws.mode = params.get("mode") === "runs" ? "runs" : "groups";
    if (params.has("s")) S.ws.smooth = Math.max(0, Math.min(0.999, Number(params.get("s")) || 0));
    if (params.has("runs")) S.ws.runs = new Set(params.get("runs").split(",").filter(Boolean).map(decodeURIComponent));
    if (params.has("log")) for (const k of params.get("log").split(",")) if (k) S.ws.log[k] = true;
    if (params.has("lin")) for (const k of params.get("lin").split(",")) if (k) S.ws.log[k] = false;
    if (params.has("layer")) for (const kv of params.get("layer").split(",")) { const [k, v] = kv.split(":"); if (k) S.ws.layers[k] = v; }
  }
  function wsToHash() {
    const ws = S.ws, p = new URLSearchParams();
    p.set("m", ws.metrics.join(","));
    p.set("mode", ws.mode);
    if (ws.smooth) p.set("s", String(ws.smooth));
    if (ws.runs) p.set("runs", [...ws.runs].map(enc).join(","));
    const logs = Object.entries(ws.log);
    if (logs.some(([, v]) => v)) p.set("log", logs.filter(([, v]) => v).map(([k]) => k).join(","));
    if (logs.some(([, v]) => !v)) p.set("lin", logs.filter(([, v]) => !v).map(([k]) => k).join(","));
    const layers = Object.entries(ws.layers);
    if (layers.length) p.set("layer", layers.map(([k, v]) => `${k}:${v}`).join(","));
    history.replaceState(null, "", "#/?" + p.toString());
  }

  class OverviewView {
    constructor(root) {
      this.root = root;
      wsDefaults();
      this.top = h("div", {});
      this.controls = h("div", { class: "controls" });
      this.grid = h("div", { class: "charts" });
      root.append(this.top, h("section", { class: "workspace" }, h("h2", { text: "charts" }), this.controls, this.grid));
      this.linker = new Linker([0, Math.max(1, S.ov.x_max)]);
      this.renderTop();
      this.renderControls();
      this.renderCharts();
    }
    panels() { return this.linker.panels; }
    renderTop() {
      this.top.textContent = "";
      this.top.append(header(), h("div", { class: "top-row" }, matrix(), compareSection()));
    }
    selectedRuns() {
      const ids = S.ov.runs.map((r) => r.id);
      return S.ws.runs ? ids.filter((id) => S.ws.runs.has(id)) : ids;
    }
    renderControls() {
      const ws = S.ws, ov = S.ov, c = this.controls;
      c.textContent = "";
      const mode = h("select", { id: "mode" }, h("option", { value: "groups", text: "arms: seed mean + band" }), h("option", { value: "runs", text: "runs" }));
      mode.value = ws.mode;
      on(mode, "change", () => { ws.mode = mode.value; this.changed(); });
      const add = h("select", { id: "add-metric" }, h("option", { value: "", text: "+ add metric…" }),
        ov.metrics.filter((m) => !ws.metrics.includes(m.key)).map((m) => h("option", { value: m.key, title: m.what || null, text: m.key + (m.layers.length ? ` (per layer ×${m.layers.length})` : "") })));
      on(add, "change", () => { if (add.value) { ws.metrics.push(add.value); this.changed(); } });
      const smooth = h("input", { type: "range", id: "smooth", min: "0", max: "0.99", step: "0.01", value: String(ws.smooth) });
      const smoothVal = h("span", { class: "dim", text: ws.smooth ? String(ws.smooth) : "off" });
      on(smooth, "input", () => { smoothVal.textContent = smooth.value === "0" ? "off" : smooth.value; });
      on(smooth, "change", () => { ws.smooth = Number(smooth.value); this.changed(false); });
      const reset = on(h("button", { type: "button", id: "reset-zoom", text: "reset zoom" }), "click", () => this.linker.reset());
      c.append(h("label", {}, "show ", mode), add, h("label", {}, "smoothing ", smooth, smoothVal), reset,
        h("span", { class: "help", text: "drag: zoom · shift+drag: pan · alt+wheel: zoom · double-click: reset · click a ▼ marker: spike view" }));
      if (ws.mode === "runs") c.appendChild(this.runPicker());
    }
    runPicker() {
      const ws = S.ws, sel = new Set(this.selectedRuns());
      const box = h("details", { class: "picker" }, h("summary", { text: `runs shown: ${sel.size} of ${S.ov.runs.length}` }));
      const all = on(h("button", { type: "button", text: "all" }), "click", () => { ws.runs = null; this.changed(); });
      const none = on(h("button", { type: "button", text: "none" }), "click", () => { ws.runs = new Set(); this.changed(); });
      box.appendChild(h("div", {}, all, none));
      for (const r of S.ov.runs) {
        const cb = h("input", { type: "checkbox", "data-run": r.id });
        cb.checked = sel.has(r.id);
        on(cb, "change", () => {
          const now = new Set(this.selectedRuns());
          if (cb.checked) now.add(r.id); else now.delete(r.id);
          ws.runs = now.size === S.ov.runs.length ? null : now;
          this.changed();
        });
        const sw = h("i", { class: "sw" }); sw.style.background = runColor(r);
        box.appendChild(h("label", { class: "pick" }, cb, sw, `${r.name} (${r.status_text})`));
      }
      box.open = true;
      return box;
    }
    specs() {
      const ws = S.ws, ov = S.ov, byId = runById(), out = [];
      for (const metric of ws.metrics) {
        const entry = entryOf(metric);
        if (!entry) continue;
        const layer = ws.layers[metric] || (entry.total ? "total" : entry.layers.length ? "all" : "total");
        const keys = layer === "all" && entry.layers.length ? entry.layers.map((l) => [layerKey(metric, l), `layer ${l}`])
          : [[layer === "total" || !entry.layers.length ? metric : layerKey(metric, layer), layer === "total" || !entry.layers.length ? metric : `${metric} · layer ${layer}`]];
        const log = ws.log[metric] !== undefined ? ws.log[metric] : isLogDefault(metric);
        for (const [key, title] of keys) {
          let traces;
          if (ws.mode === "groups") {
            traces = ov.groups.map((g) => ({ runs: g.runs.filter((id) => (byId.get(id) || { metrics: [] }).metrics.includes(key)), metric: key, group: true, label: g.label, color: armColor(g.arm) }))
              .filter((t) => t.runs.length);
          } else {
            traces = this.selectedRuns().map((id) => byId.get(id)).filter((r) => r && r.metrics.includes(key))
              .map((r) => ({ runs: [r.id], metric: key, label: r.name, color: runColor(r) }));
          }
          const runs = [...new Set(traces.flatMap((t) => t.runs))];
          out.push({ key: `${key}|${ws.mode}|${log}|${ws.smooth}`, metric, title, traces, log, small: keys.length > 1, markers: markersFor(runs), entry, layer, what: entry.what });
        }
      }
      return out;
    }
    controlsFor(spec) {
      const ws = S.ws, metric = spec.metric, entry = spec.entry, box = h("span", { class: "chart-ctl" });
      if (entry.layers.length) {
        const sel = h("select", { class: "layer", "aria-label": "layer" },
          entry.total ? h("option", { value: "total", text: "total" }) : null,
          h("option", { value: "all", text: "all layers (small multiples)" }),
          entry.layers.map((l) => h("option", { value: String(l), text: "layer " + l })));
        sel.value = spec.layer;
        on(sel, "change", () => { ws.layers[metric] = sel.value; this.changed(); });
        box.appendChild(sel);
      }
      const log = h("input", { type: "checkbox", class: "log" });
      log.checked = spec.log;
      on(log, "change", () => { ws.log[metric] = log.checked; this.changed(false); });
      box.appendChild(h("label", {}, log, " log"));
      const rm = on(h("button", { type: "button", class: "rm", title: "remove this metric", text: "×" }), "click", () => {
        ws.metrics = ws.metrics.filter((m) => m !== metric); this.changed();
      });
      box.appendChild(rm);
      return box;
    }
    renderCharts(changedRuns) {
      const specs = this.specs();
      const old = new Map(this.linker.panels.map((p) => [p.spec.key + JSON.stringify(p.spec.traces.map((t) => t.runs)), p]));
      const keep = new Set();
      const full = Math.max(1, ...S.ov.runs.map((r) => r.x_max || 0));
      const grew = full !== this.linker.full[1];
      this.linker.full = [0, full];
      const next = [];
      for (const spec of specs) {
        const id = spec.key + JSON.stringify(spec.traces.map((t) => t.runs));
        let p = old.get(id);
        if (p) {
          keep.add(p);
          p.spec.markers = spec.markers;
          if (changedRuns && spec.traces.some((t) => t.runs.some((r) => changedRuns.has(r)))) p.load();
          else if (p.u) p.u.redraw(false);
        } else {
          spec.controls = spec.small ? null : this.controlsFor(spec);
          p = new Panel(this.linker, spec);
          p.fresh = true;
        }
        next.push(p);
      }
      for (const p of this.linker.panels) if (!keep.has(p) && !next.includes(p)) p.destroy();
      this.linker.panels = next;
      this.grid.textContent = "";
      let smallBox = null, lastMetric = null;
      for (const p of next) {
        if (p.spec.small) {
          if (!smallBox || lastMetric !== p.spec.metric) {
            smallBox = h("div", { class: "multiples" });
            const head = h("div", { class: "chart-head group-title" }, h("span", { class: "chart-title", text: p.spec.metric + " per layer", title: p.spec.what || null }), this.controlsFor(p.spec));
            this.grid.appendChild(h("div", { class: "chart-group" }, head, smallBox));
          }
          smallBox.appendChild(p.el);
        } else { smallBox = null; this.grid.appendChild(p.el); }
        lastMetric = p.spec.metric;
      }
      for (const p of next) {
        if (p.fresh) { p.fresh = false; p.load(); }
        else if (grew && !this.linker.range) p.setRange(...this.linker.full); // one step axis for all
      }
    }
    changed(controls = true) {
      wsToHash();
      if (controls) this.renderControls();
      this.renderCharts();
    }
    refresh(changedRuns) { this.renderTop(); if (S.ws.mode === "runs") this.renderControls(); this.renderCharts(changedRuns); }
    resize() { this.linker.panels.forEach((p) => p.resize()); }
    destroy() { this.linker.panels.forEach((p) => p.destroy()); }
  }

  // ------------------------------------------------------------------------------ run page
  function runCharts(linker, run, extra) {
    const has = (k) => run.metrics.includes(k);
    const layersOf = (prefix) => run.metrics.map((k) => { const m = /^(.+)\/layer_(\d+)$/.exec(k); return m && m[1] === prefix ? Number(m[2]) : null; })
      .filter((v) => v !== null).sort((a, b) => a - b);
    const markers = markersFor([run.id]);
    const specs = [];
    const color = PALETTE[0];
    const loss = [["train/loss", color, 1.4], ["eval/loss", "#ff7f0e", 2.2]].filter(([k]) => has(k));
    if (loss.length) specs.push({ key: "loss", title: "loss (train, eval)", traces: loss.map(([k, c, w]) => ({ runs: [run.id], metric: k, label: k, color: c, width: w })) });
    if (has("grad/norm")) specs.push({ key: "gnorm", title: "global grad norm", log: true, traces: [{ runs: [run.id], metric: "grad/norm", label: "grad/norm", color }] });
    for (const [prefix, title, log] of [["grad/norm", "grad norm per layer", true], ["attn/logit_max", "max attention logit per layer", false]]) {
      const ls = layersOf(prefix);
      if (ls.length) specs.push({ key: prefix + "/layers", title, log, traces: ls.map((l) => ({ runs: [run.id], metric: layerKey(prefix, l), label: "layer " + l, color: layerColor(l, ls.length), width: extra && extra.lead === l ? 3 : 1.3 })) });
    }
    const z = [["logits/log_z_mean", "#2ca02c"], ["logits/log_z_max", "#9467bd"]].filter(([k]) => has(k));
    if (z.length) specs.push({ key: "logz", title: "log Z", traces: z.map(([k, c]) => ({ runs: [run.id], metric: k, label: k, color: c })) });
    for (const k of (extra && extra.more) || []) if (has(k)) specs.push({ key: "more:" + k, title: k, log: isLogDefault(k), traces: [{ runs: [run.id], metric: k, label: k, color }] });
    return specs.map((s) => new Panel(linker, { ...s, markers }));
  }

  // the report's lead-lag summary (reports.leadlag, computed by the server), per arm
  function leadlagSection(ll, arm) {
    const pct = (v) => (v === null ? "—" : `${Math.round(100 * v)}%`);
    const rows = ll.rows.filter((r) => !arm || r.arm === arm);
    const sentences = Object.entries(ll.sentences).filter(([a]) => !arm || a === arm);
    return h("div", { id: "leadlag" },
      h("h2", { text: "what came before the loss spikes" }),
      h("p", { class: "meta", text: `onset: a signal more than ${fmt(ll.z)} robust σ out of its recent range in the ${ll.horizon} steps up to a loss spike; lead = steps ahead (docs/leadlag.md)` }),
      h("ul", {}, sentences.map(([a, t]) => h("li", {}, h("b", { text: a }), `: ${t}`))),
      table(["arm", "signal", "spikes judged", "preceded", "first", "at the spike step", "median lead (steps)", "leading layer (share)", "cadence (steps)"],
        rows.map((r) => [r.arm, r.signal, num(r.judged), r.judged ? pct(r.preceded) : "—", r.judged ? pct(r.first) : "—", r.judged ? pct(r.same_step) : "—",
          num(r.median_lead), r.leading_layer === null ? "—" : `${r.leading_layer} (${pct(r.layer_share)})`, num(r.cadence)]), "leadlag"));
  }

  function eventsTable(events, withRun) {
    const byId = runById();
    return table([...(withRun ? ["run", "arm", "seed"] : []), "step", "rules fired (σ)", "leading layer (σ)", "attn logits rising", "log Z rising", "precursors (before a loss spike)", ""],
      events.map((ev) => {
        const r = byId.get(ev.run) || { name: ev.run, arm: "—", seed: null };
        return [...(withRun ? [h("a", { href: runHash(ev.run), text: r.name }), r.arm, fmt(r.seed)] : []), num(ev.step),
          h("span", {}, ...(ev.rewound ? [h("span", { class: "rewound", text: "rewound" })] : []), ...ev.rules.map((ru) => h("span", { class: "rule", text: `${ru.metric}@${ru.rule || "?"} ${fmt(ru.sigma, 3)}σ` }))),
          ev.leading_layer === null ? "—" : `${ev.leading_layer} (${fmt(ev.leading_sigma, 3)}σ)`, fmt(ev.attn_logit_rising), fmt(ev.log_z_rising),
          h("span", { class: "precursors", text: precursorText(ev) }),
          h("a", { href: spikeHash(ev), class: "go", text: "zoom ›" })];
      }), "events");
  }

  class RunView {
    constructor(root, id) {
      this.root = root; this.id = id; this.more = [];
      this.render();
    }
    panels() { return this.linker ? this.linker.panels : []; }
    render() {
      const run = runById().get(this.id);
      this.root.textContent = "";
      if (!run) { this.root.append(header(), h("p", { text: "no such run in this experiment" })); this.linker = null; return; }
      this.shape = shapeOf(run);
      const range = this.linker ? this.linker.range : null;
      if (this.linker) this.linker.panels.forEach((p) => p.destroy());
      this.linker = new Linker([0, Math.max(1, run.x_max || 0)]);
      this.linker.range = range;
      const panels = runCharts(this.linker, run, { more: this.more });
      const add = h("select", { id: "add-metric" }, h("option", { value: "", text: "+ add metric…" }),
        run.metrics.filter((k) => !this.more.includes(k)).map((k) => h("option", { value: k, text: k })));
      on(add, "change", () => { if (add.value) { this.more.push(add.value); this.render(); } });
      const events = S.ov.events.filter((e) => e.run === run.id);
      const gLayers = run.metrics.filter((k) => k.startsWith("grad/norm/layer_")).map((k) => Number(k.split("_").pop())).sort((a, b) => a - b);
      const heat = gLayers.length ? new Heatmap(this.linker, { title: "grad norm per layer (heatmap, log colour)", run: run.id, prefix: "grad/norm", layers: gLayers, markers: markersFor([run.id]) }) : null;
      const info = table(["field", "value"], [["run id", run.id], ["arm", run.arm], ["seed", fmt(run.seed)], ["lr", fmt(run.lr)], ["cell", fmt(run.cell)], ["recipe", fmt(run.recipe)],
        ["status", run.status_text], ["last step", fmt(run.last_step)], ...Object.entries(run.summary).map(([k, v]) => [SUMMARY_LABELS[k] || k, fmt(v, 5)])], "info");
      const params = table(["param", "value"], Object.entries(run.params).map(([k, v]) => [k, fmt(v, 6)]), "params");
      this.root.append(header(run.name),
        h("p", { class: "meta run-meta", text: runMeta(run) }),
        h("div", { class: "controls" }, add, on(h("button", { type: "button", id: "reset-zoom", text: "reset zoom" }), "click", () => this.linker.reset()),
          h("span", { class: "help", text: "all charts share the step axis: drag to zoom, shift+drag to pan, double-click to reset" })),
        h("div", { class: "charts" }, panels.map((p) => p.el)), heat ? heat.el : null,
        h("h2", { text: `spike events (${events.length})` }), events.length ? eventsTable(events, false) : h("p", { text: "no spikes detected" }),
        h("div", { class: "two" }, h("div", {}, h("h2", { text: "run" }), info),
          h("details", { class: "params" }, h("summary", { text: `params (${Object.keys(run.params).length})` }), params)));
      this.linker.panels.forEach((p) => p.load());
    }
    refresh(changed) {
      if (!changed.has(this.id)) return;
      const run = runById().get(this.id);
      if (!run || !this.linker || shapeOf(run) !== this.shape) { this.render(); return; }
      // same charts: new points only (a running run), no rebuild
      this.linker.full = [0, Math.max(1, run.x_max || 0)];
      this.root.replaceChild(header(run.name), this.root.querySelector("header"));
      this.root.querySelector(".run-meta").textContent = runMeta(run);
      this.panels().forEach((p) => { if (!this.linker.range) p.setRange(...this.linker.full); p.load(); });
    }
    resize() { this.panels().forEach((p) => p.resize()); }
    destroy() { this.panels().forEach((p) => p.destroy()); }
  }
  const shapeOf = (run) => `${run.metrics.join(",")}|${run.n_events}|${run.status}`;
  const runMeta = (run) => `arm ${run.arm} · seed ${fmt(run.seed)} · lr ${fmt(run.lr)} · ${run.status_text} · ${run.n_events} spike events`;

  // ------------------------------------------------------------------------------ spikes
  class SpikesView {
    constructor(root) { this.root = root; this.render(); }
    panels() { return []; }
    render() {
      const f = S.spikeFilter, byId = runById(), ov = S.ov;
      const match = (ev) => {
        const r = byId.get(ev.run) || {};
        return (!f.arm || r.arm === f.arm) && (!f.rule || ev.rules.some((ru) => ru.rule === f.rule || ru.metric + "@" + ru.rule === f.rule))
          && (f.layer === "" || String(ev.leading_layer) === f.layer) && (!f.text || (r.name || ev.run).toLowerCase().includes(f.text.toLowerCase()));
      };
      const shown = ov.events.filter(match);
      const sel = (key, label, values) => {
        const s = h("select", { id: "f-" + key }, h("option", { value: "", text: `${label}: all` }), values.map((v) => h("option", { value: String(v), text: String(v) })));
        s.value = f[key];
        on(s, "change", () => { f[key] = s.value; this.render(); });
        return s;
      };
      const text = h("input", { type: "search", id: "f-text", placeholder: "run name contains…", value: f.text });
      on(text, "change", () => { f.text = text.value; this.render(); });
      const layers = [...new Set(ov.events.map((e) => e.leading_layer).filter((v) => v !== null))].sort((a, b) => a - b);
      const rules = [...new Set(ov.events.flatMap((e) => e.rules.map((r) => r.rule)))].filter(Boolean).sort();
      const nRules = shown.reduce((n, e) => n + e.rules.length, 0);
      // arm x leading layer counts
      const arms = [...new Set(shown.map((e) => (byId.get(e.run) || {}).arm))];
      const counts = arms.map((a) => layers.map((l) => shown.filter((e) => (byId.get(e.run) || {}).arm === a && e.leading_layer === l).length));
      const cmax = Math.max(1, ...counts.flat());
      const heat = h("table", { class: "layer-heat" }, h("thead", {}, h("tr", {}, h("th", { text: "arm \\ leading layer" }), layers.map((l) => h("th", { text: String(l) })))),
        h("tbody", {}, arms.map((a, i) => h("tr", {}, h("th", { text: a }), counts[i].map((n) => {
          const td = h("td", { class: "num", text: n ? String(n) : "" });
          td.style.background = n ? rgb(lerp(SCORE, n / cmax)) : ""; td.style.color = n / cmax > 0.55 ? "#fff" : "#222";
          return td;
        })))));
      this.root.textContent = "";
      this.root.append(header(`${ov.name}: spike events`),
        h("div", { class: "controls" }, sel("arm", "arm", ov.arms), sel("rule", "rule", rules), sel("layer", "leading layer", layers), text),
        h("p", { class: "meta", id: "spike-count", text: `${shown.length} events (one per run and step; ${nRules} rule firings) in ${new Set(shown.map((e) => e.run)).size} runs` }),
        layers.length ? h("div", {}, h("h2", { text: "events by arm and leading layer" }), heat) : null,
        ov.leadlag ? leadlagSection(ov.leadlag, f.arm) : null,
        h("h2", { text: "events" }), shown.length ? eventsTable(shown, true) : h("p", { text: "no spike events" }));
    }
    refresh() { this.render(); }
    resize() {}
    destroy() {}
  }

  class SpikeView {
    constructor(root, id, step) { this.root = root; this.id = id; this.step = step; this.render(); }
    panels() { return this.linker ? this.linker.panels : []; }
    render() {
      const ov = S.ov, run = runById().get(this.id);
      const ev = ov.events.find((e) => e.run === this.id && e.step === this.step);
      this.root.textContent = "";
      if (!run) { this.root.append(header(), h("p", { text: "no such run" })); return; }
      const w = S.spikeWindow || ov.window;
      this.shape = shapeOf(run);
      if (this.linker) this.linker.panels.forEach((p) => p.destroy());
      this.linker = new Linker([this.step - w, this.step + w]);
      const panels = runCharts(this.linker, run, { lead: ev ? ev.leading_layer : null });
      const idx = ov.events.indexOf(ev);
      const nav = h("div", { class: "controls" },
        idx > 0 ? h("a", { href: spikeHash(ov.events[idx - 1]), text: "‹ previous event" }) : null,
        idx >= 0 && idx < ov.events.length - 1 ? h("a", { href: spikeHash(ov.events[idx + 1]), text: "next event ›" }) : null,
        h("span", { text: ` window ±${w} steps ` }),
        on(h("button", { type: "button", text: "wider" }), "click", () => { S.spikeWindow = w * 2; this.render(); }),
        on(h("button", { type: "button", text: "narrower" }), "click", () => { S.spikeWindow = Math.max(2, Math.round(w / 2)); this.render(); }),
        h("a", { href: runHash(run.id), text: "whole run ›" }));
      const rules = ev ? table(["rule", "series", "σ", "value", "window mean", "window std"], ev.rules.map((r) => [r.rule || "—", r.metric, num(r.sigma, 4), num(r.value, 5), num(r.mean, 5), num(r.std, 4)]), "rules") : h("p", { text: "no spike event at this step" });
      const gLayers = run.metrics.filter((k) => k.startsWith("grad/norm/layer_")).map((k) => Number(k.split("_").pop())).sort((a, b) => a - b);
      const heat = gLayers.length ? new Heatmap(this.linker, { title: "grad norm per layer around the spike (log colour)", run: run.id, prefix: "grad/norm", layers: gLayers, markers: markersFor([run.id]) }) : null;
      const caption = ev ? `step ${ev.step} · ${eventLabel(ev)} · attention logits rising: ${fmt(ev.attn_logit_rising)} · log Z rising: ${fmt(ev.log_z_rising)}` +
        (ev.precursors ? ` · before it: ${precursorText(ev)}` : "") : `step ${this.step}`;
      this.root.append(header(`spike: ${run.name} @ ${this.step}`),
        h("p", { class: "meta", id: "spike-caption", text: `arm ${run.arm} · seed ${fmt(run.seed)} · lr ${fmt(run.lr)} · ${caption}` }), nav, rules,
        h("div", { class: "charts" }, panels.map((p) => p.el)), heat ? heat.el : null);
      this.linker.panels.forEach((p) => p.load());
    }
    refresh(changed) {
      if (!changed.has(this.id)) return;
      const run = runById().get(this.id);
      if (!run || !this.linker || shapeOf(run) !== this.shape) this.render();
      else this.panels().forEach((p) => p.load()); // the window is fixed: new points only
    }
    resize() { this.panels().forEach((p) => p.resize()); }
    destroy() { this.panels().forEach((p) => p.destroy()); }
  }

  // ------------------------------------------------------------------------------ routing, live
  function route() {
    DASH.route = location.hash; // the view shown (tests wait for it after a hash change)
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean);
    const root = document.getElementById("app");
    if (S.view) S.view.destroy();
    root.textContent = "";
    window.scrollTo(0, 0);
    if (parts[0] === "run" && parts[1]) { S.view = new RunView(root, decodeURIComponent(parts[1])); document.title = `${runName(decodeURIComponent(parts[1]))} · ${S.ov.name}`; }
    else if (parts[0] === "spikes") { S.view = new SpikesView(root); document.title = `spikes · ${S.ov.name}`; }
    else if (parts[0] === "spike" && parts[1]) { S.view = new SpikeView(root, decodeURIComponent(parts[1]), Number(parts[2])); document.title = `spike · ${S.ov.name}`; }
    else { wsFromHash(new URLSearchParams(query || "")); S.view = new OverviewView(root); document.title = `${S.ov.name} · stability dashboard`; }
  }
  const runName = (id) => (runById().get(id) || { name: id }).name;

  function changedRuns(old, now) {
    const prev = new Map(old.runs.map((r) => [r.id, r]));
    const out = new Set();
    for (const r of now.runs) {
      const p = prev.get(r.id);
      if (!p || p.status !== r.status || p.x_max !== r.x_max || p.last_step !== r.last_step || p.n_events !== r.n_events || p.metrics.length !== r.metrics.length) out.add(r.id);
    }
    for (const id of prev.keys()) if (!now.runs.some((r) => r.id === id)) out.add(id);
    return out;
  }
  async function poll() {
    try {
      const ov = await S.source.overview(S.version);
      if (ov.unchanged || ov.version === S.version) return;
      const changed = changedRuns(S.ov, ov);
      S.ov = ov; S.version = DASH.version = ov.version;
      if (S.view) S.view.refresh(changed);
    } catch (e) { DASH.errors.push(String(e)); }
  }

  async function start() {
    const cfg = JSON.parse(document.getElementById("dash-config").textContent);
    const embedded = document.getElementById("dash-data");
    S.source = cfg.mode === "live" ? new LiveSource(cfg.poll_s) : new StaticSource(JSON.parse(embedded.textContent));
    S.ov = await S.source.overview();
    S.version = DASH.version = S.ov.version || 0;
    on(window, "hashchange", route);
    let t = 0;
    on(window, "resize", () => { clearTimeout(t); t = setTimeout(() => S.view && S.view.resize(), 150); });
    route();
    DASH.ready = true;
    if (S.source.live) setInterval(poll, Math.max(250, 1000 * (cfg.poll_s || 2)));
  }
  start().catch((e) => {
    DASH.errors.push(String(e));
    const root = document.getElementById("app");
    root.textContent = "";
    root.appendChild(h("p", { class: "error", text: "could not load the dashboard: " + e.message }));
  });
})();
