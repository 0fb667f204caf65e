"""A self-contained HTML spike dashboard for one `GridData` (no external resources, no JavaScript).

`write_dashboard` writes `index.html` (arms x seeds matrix per learning rate), `runs/<name>.html`
(curves with spikes marked, spike table, params) and `spikes.html` (a zoomed window per spike).
Every string from the grid is escaped with `html.escape(quote=True)`; run page names come from
`run_page_names` (no path traversal); files are replaced atomically so a live reader never sees
half a page. With `refresh_s`, pages carry a meta refresh (live mode, see `reports.serve`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from reports import frames as F
from reports.svg import Marker, Series, esc, line_chart
from reports.tables import atomic_write_text
from stability import metric_names as M

CSS = """
body{font-family:sans-serif;margin:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:18px 0 6px}
nav a{margin-right:14px}.meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.matrix td{padding:2px;min-width:130px}td.empty{background:#f3f3f3}
a.cell{display:block;padding:4px 6px;margin:1px;text-decoration:none;border-radius:3px;color:inherit}
a.cell span{display:block}a.cell .st{font-weight:bold}a.st-running{outline:2px dashed #1f77b4}
.swatch{display:inline-block;width:22px;height:12px;border:1px solid #bbb;vertical-align:middle}
.legend-row span{margin-right:10px;font-size:12px}
figure.spike{display:inline-block;margin:8px;padding:6px;border:1px solid #ccc;background:#fff}
figure.spike:target{outline:3px solid #d62728}figcaption{font-size:12px;margin-bottom:4px}
svg.chart{background:#fff;display:block;margin:6px 0}.live{color:#b35900;font-weight:bold}
"""
STATUS_BG = {"diverged": "#f4a6a0", "failed": "#c8c8c8", "interrupted": "#f7dc9c"}
SCALE = ((252, 251, 253), (188, 189, 220), (117, 107, 177), (63, 0, 125))  # sequential purples
CHART_W, GALLERY_W = 1000, 330


def run_page_names(run_ids: Iterable[str]) -> dict[str, str]:
    """Run id -> file name under `runs/`: [A-Za-z0-9_.-] only, no leading dot, unique ignoring case
    (a hash of the id is appended whenever the id itself is not already such a name)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for rid in dict.fromkeys(str(r) for r in run_ids):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", rid).strip("._-")[:80] or "run"
        name = slug if slug == rid else f"{slug}-{_hash(rid)}"
        while name.lower() in used:
            name = f"{slug}-{_hash(name)}"
        used.add(name.lower())
        out[rid] = f"{name}.html"
    return out


def _hash(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:8]


atomic_write = atomic_write_text  # the reports' one atomic text writer


def fmt(v: object, digits: int = 4) -> str:
    """A table value: numbers to `digits` significant digits, NA as an em dash, the rest as str."""
    try:
        if v is None or pd.isna(v):
            return "—"
    except (TypeError, ValueError):  # list-like values
        pass
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        return f"{v:.{digits}g}"
    return str(v)


def score_color(score: float, vmax: float) -> tuple[str, str]:
    """(background, text colour) for a spike score on the sequential scale 0..vmax."""
    t = 0.0 if not np.isfinite(score) or vmax <= 0 else float(np.clip(score / vmax, 0.0, 1.0))
    i = min(int(t * (len(SCALE) - 1)), len(SCALE) - 2)
    u = t * (len(SCALE) - 1) - i
    rgb = [round(a + (b - a) * u) for a, b in zip(SCALE[i], SCALE[i + 1])]
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#fff" if t > 0.55 else "#222")


def status_text(run: pd.Series) -> str:
    """finished | diverged @ step | failed | running @ step | interrupted @ step (a stopped run,
    checkpointed: a rerun resumes it)."""
    status = str(run[F.STATUS])
    at = run[F.DIVERGED_AT_STEP] if status == "diverged" else run[F.LAST_STEP]
    if status in ("diverged", "running", "interrupted") and not pd.isna(at):
        return f"{status} @ {int(at)}"
    return status


def status_is(run: pd.Series, status: str) -> bool:
    return str(run[F.STATUS]) == status


def _page(title: str, body: str, refresh_s: float | None, root: str) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    live = f'<span class="live">live: refreshes every {refresh_s:g} s</span>' if refresh_s else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head><body>'
            f'<nav><a href="{root}index.html">overview</a><a href="{root}spikes.html">spike gallery</a>'
            f"{live}</nav>"
            f"{body}</body></html>\n")


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; header cells are escaped here, row cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _td(v: object, num: bool = False) -> str:
    return f'<td class="num">{esc(fmt(v))}</td>' if num else f"<td>{esc(fmt(v))}</td>"


class _Curves:
    """Per-run step series as sorted numpy arrays, grouped once for the whole grid."""

    def __init__(self, grid: F.GridData) -> None:
        self.series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for (rid, metric), g in grid.series.groupby([F.RUN_ID, "metric"], sort=False):
            x, y = g["step"].to_numpy(float), pd.to_numeric(g["value"], errors="coerce").to_numpy(float)
            order = np.argsort(x, kind="stable")
            self.series[(str(rid), str(metric))] = (x[order], y[order])
        d = grid.dense
        d = d[((d["key"] == M.GRAD_NORM) & (d["head"] == -1)) | (d["key"] == M.ATTN_LOGIT_MAX)]
        self.dense = {(str(r), str(k)): g for (r, k), g in d.groupby([F.RUN_ID, "key"], sort=False)}
        self._layers: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}

    def get(self, rid: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return self.series.get((rid, metric), (np.array([]), np.array([])))

    def layers(self, rid: str, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per-layer (layer, steps, values) of a dense key, max over heads (layer >= 0 only)."""
        if (rid, key) not in self._layers:
            g = self.dense.get((rid, key))
            out = []
            if g is not None:
                m = g[g["layer"] >= 0].groupby(["layer", "step"])["value"].max()
                for layer, s in m.groupby(level="layer"):
                    steps = s.index.get_level_values("step").to_numpy(float)
                    out.append((int(layer), steps, s.to_numpy(float)))
            self._layers[(rid, key)] = out
        return self._layers[(rid, key)]

    def attn_layers(self, rid: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Max attention logit per layer: MLflow series attn/logit_max/layer_i, else the dense frame."""
        pat = re.compile(re.escape(M.ATTN_LOGIT_MAX) + r"/layer_(\d+)$")
        found = [(int(m.group(1)), *xy) for (r, metric), xy in self.series.items()
                 if r == rid and (m := pat.match(metric))]
        return sorted(found, key=lambda t: t[0]) or self.layers(rid, M.ATTN_LOGIT_MAX)


def _window(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.searchsorted(x, lo, "left"), np.searchsorted(x, hi, "right")
    return x[a:b], y[a:b]


def _spikes_with_anchors(grid: F.GridData, names: dict[str, str]) -> pd.DataFrame:
    """The spikes frame plus an `anchor` column (gallery element id), in run order then step."""
    sp = grid.spikes.copy()
    if sp.empty:
        sp["anchor"] = pd.Series(dtype=object)
        return sp
    order = {rid: i for i, rid in enumerate(names)}
    sp["_o"] = sp[F.RUN_ID].astype(str).map(order).fillna(len(order))
    sp = sp.sort_values(["_o", "step"], kind="stable").drop(columns="_o").reset_index(drop=True)
    stems = sp[F.RUN_ID].astype(str).map(lambda r: names.get(r, f"x-{_hash(r)}.html")[:-5])
    base = "spike-" + stems + "-" + sp["step"].astype(str)
    sp["anchor"] = base + "-" + base.groupby(base).cumcount().astype(str)
    return sp


def _markers(spikes: pd.DataFrame, run: pd.Series | None) -> list[Marker]:
    """Spike markers (one per step, titles joined) plus the divergence marker of `run`."""
    by_step: dict[float, list[str]] = {}
    for r in spikes.itertuples(index=False):
        by_step.setdefault(float(r.step), []).append(f"step {r.step}: {r.series} {fmt(r.sigma, 3)} sigma, "
                                                     f"leading layer {fmt(r.leading_layer)}")
    return [Marker(x, "\n".join(t)) for x, t in by_step.items()] + _diverged(run)


def _diverged(run: pd.Series | None) -> list[Marker]:
    if run is None or not status_is(run, "diverged") or pd.isna(run[F.DIVERGED_AT_STEP]):
        return []
    return [Marker(float(run[F.DIVERGED_AT_STEP]), f"diverged at step {run[F.DIVERGED_AT_STEP]}", "diverged")]


def _overview(grid: F.GridData, names: dict[str, str], refresh_s: float | None) -> str:
    runs = grid.runs
    counts = runs[F.STATUS].astype(str).value_counts()
    statuses = list(F.STATUSES) + [s for s in counts.index if s not in F.STATUSES]
    count_txt = " · ".join(f"{esc(s)} {int(counts.get(s, 0))}" for s in statuses)
    scores = runs[F.SPIKE_SCORE_GRAD_NORM].to_numpy(float)
    vmax = float(np.nanmax(scores)) if np.isfinite(scores).any() else 0.0
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [f"<h1>{esc(grid.name)}</h1>",
            f'<p class="meta">baseline arm: <b>{esc(grid.baseline or "—")}</b> · runs {len(runs)} · '
            f"{count_txt} · generated {now}</p>"]
    arm_of = runs[F.ARM].map(lambda a: "—" if pd.isna(a) else str(a))
    arms = [str(a) for a in grid.arms] + (["—"] if (arm_of == "—").any() else [])
    lrs = sorted(runs[F.LR].dropna().unique().tolist()) + ([np.nan] if runs[F.LR].isna().any() else [])
    for lr in lrs:
        sub = runs[runs[F.LR].isna()] if pd.isna(lr) else runs[runs[F.LR] == lr]
        seeds = sorted(sub[F.SEED].dropna().astype(int).unique().tolist())
        cols: list[int | None] = [*seeds, *([None] if sub[F.SEED].isna().any() else [])]
        body.append(f"<h2>lr = {esc(fmt(lr))}</h2>" if len(lrs) > 1 or not pd.isna(lr) else "<h2>runs</h2>")
        rows = []
        for arm in arms:
            in_arm = sub[arm_of.loc[sub.index] == arm]
            label = esc(arm) + (" <i>(baseline)</i>" if arm == grid.baseline else "")
            row = [f"<th>{label}</th>"]
            for seed in cols:
                hit = in_arm[in_arm[F.SEED].isna()] if seed is None else in_arm[in_arm[F.SEED] == seed]
                cells = "".join(_cell(r, names, vmax) for _, r in hit.iterrows())
                row.append(f"<td>{cells}</td>" if cells else '<td class="empty"></td>')
            rows.append(row)
        body.append(_table(["arm \\ seed", *[f"seed {s}" if s is not None else "seed —" for s in cols]],
                           rows, "matrix"))
    ticks = [0.0, vmax / 2, vmax] if vmax > 0 else [0.0]
    swatches = "".join(f'<span><i class="swatch" style="background:{score_color(t, vmax)[0]}"></i> '
                       f"{t:.3g}</span>" for t in ticks)
    body.append(f'<p class="legend-row"><b>grad-norm spike score (%):</b> {swatches}'
                f'<span><i class="swatch" style="background:{STATUS_BG["diverged"]}"></i> diverged</span>'
                f'<span><i class="swatch" style="background:{STATUS_BG["failed"]}"></i> failed</span>'
                f'<span><i class="swatch" style="background:{STATUS_BG["interrupted"]}"></i> interrupted'
                "</span></p>")
    return _page(f"{grid.name}: overview", "".join(body), refresh_s, "")


def _cell(run: pd.Series, names: dict[str, str], vmax: float) -> str:
    status = str(run[F.STATUS])
    bg, fg = score_color(run[F.SPIKE_SCORE_GRAD_NORM], vmax)
    bg, fg = (STATUS_BG[status], "#222") if status in STATUS_BG else (bg, fg)
    href = "runs/" + names[str(run[F.RUN_ID])]
    return (f'<a class="cell st-{esc(status)}" href="{esc(href)}" title="{esc(run[F.RUN_NAME])}" '
            f'style="background:{bg};color:{fg}"><span class="st">{esc(status_text(run))}</span>'
            f"<span>eval {esc(fmt(run[F.FINAL_EVAL_LOSS]))}</span>"
            f"<span>spike score {esc(fmt(run[F.SPIKE_SCORE_GRAD_NORM], 3))}</span>"
            f'<span class="name">{esc(fmt(run[F.RUN_NAME]))}</span></a>')


def _run_page(grid: F.GridData, run: pd.Series, curves: _Curves, spikes: pd.DataFrame,
              refresh_s: float | None) -> str:
    rid = str(run[F.RUN_ID])
    marks = _markers(spikes, run)
    ident = [F.RUN_ID, F.RUN_NAME, F.ARM, F.SEED, F.LR, F.CELL, F.RECIPE, F.STATUS, F.DIVERGED_AT_STEP,
             F.LAST_STEP, *F.SUMMARY_COLUMNS]
    info = _table(["field", "value"], [[_td(c), _td(run.get(c), True)] for c in ident], "info")
    train, ev = curves.get(rid, M.TRAIN_LOSS), curves.get(rid, M.EVAL_LOSS)
    charts = [
        line_chart([Series("train/loss", *train), Series("eval/loss", *ev, dash="5 3", width=2)],
                   title="loss", width=CHART_W, markers=marks),
        line_chart([Series("grad/norm", *curves.get(rid, M.GRAD_NORM))], title="global grad norm (log)",
                   width=CHART_W, log_y=True, markers=marks),
        line_chart([Series(f"layer {la}", x, y) for la, x, y in curves.attn_layers(rid)],
                   title="max attention logit per layer", width=CHART_W, markers=marks),
        line_chart([Series("log Z (mean)", *curves.get(rid, M.LOGITS_LOG_Z_MEAN))], title="log Z",
                   width=CHART_W, markers=marks),
    ]
    cols = ["step", "series", "sigma", "leading_layer", "leading_sigma", "attn_logit_rising", "log_z_rising"]
    rows = [[f'<td class="num"><a href="../spikes.html#{esc(r["anchor"])}">{int(r["step"])}</a></td>',
             *[_td(r[c], c not in ("series",)) for c in cols[1:]]] for _, r in spikes.iterrows()]
    spike_html = _table(cols, rows, "spikes") if rows else "<p>no spikes detected</p>"
    params = grid.params[grid.params.index.astype(str) == rid]
    prow = [[_td(k), _td(v, True)] for k, v in params.iloc[0].dropna().items()] if len(params) else []
    body = (f"<h1>{esc(fmt(run[F.RUN_NAME]))}</h1>"
            f'<p class="meta">grid {esc(grid.name)} · arm {esc(fmt(run[F.ARM]))} · '
            f"{esc(status_text(run))}</p>"
            f'<div class="charts">{"".join(charts)}</div><h2>spikes ({len(spikes)})</h2>{spike_html}'
            f'<h2>run</h2>{info}<h2>params</h2>{_table(["param", "value"], prow, "params")}')
    return _page(f"{fmt(run[F.RUN_NAME])}: {grid.name}", body, refresh_s, "../")


def _gallery(grid: F.GridData, spikes: pd.DataFrame, curves: _Curves, names: dict[str, str], window: int,
             refresh_s: float | None) -> str:
    runs = grid.runs.set_index(F.RUN_ID, drop=False)
    runs = runs[~runs.index.duplicated()]
    figs = []
    for _, sp in spikes.iterrows():
        rid, step = str(sp[F.RUN_ID]), float(sp["step"])
        run = runs.loc[rid] if rid in runs.index else None
        lo, hi = step - window, step + window
        mark = [Marker(step, f"step {int(step)}: {sp['series']} {fmt(sp['sigma'], 3)} sigma")]
        mark += _diverged(run)
        lead = sp["leading_layer"]
        layers = [Series(f"layer {la}" + (" (lead)" if not pd.isna(lead) and la == int(lead) else ""),
                         *_window(x, y, lo, hi), width=3 if not pd.isna(lead) and la == int(lead) else 1.2)
                  for la, x, y in curves.layers(rid, M.GRAD_NORM)]
        small = {"width": GALLERY_W, "height": 190, "x_range": (lo, hi), "markers": mark}
        charts = [line_chart([Series("train/loss", *_window(*curves.get(rid, M.TRAIN_LOSS), lo, hi))],
                             title="loss", **small),
                  line_chart([Series("grad/norm", *_window(*curves.get(rid, M.GRAD_NORM), lo, hi))],
                             title="global grad norm", **small),
                  line_chart(layers, title="grad norm per layer", **small)]
        arm, seed = (run[F.ARM], run[F.SEED]) if run is not None else (None, None)
        name = fmt(run[F.RUN_NAME]) if run is not None else rid
        link = (f'<a href="runs/{esc(names[rid])}">{esc(name)}</a>' if rid in names else esc(name))
        cap = (f"{link} · arm {esc(fmt(arm))} · seed {esc(fmt(seed))} · step {int(step)} · "
               f"{esc(sp['series'])} · sigma {esc(fmt(sp['sigma'], 3))} · leading layer {esc(fmt(lead))} "
               f"({esc(fmt(sp['leading_sigma'], 3))} sigma)")
        figs.append(f'<figure class="spike" id="{esc(sp["anchor"])}"><figcaption>{cap}</figcaption>'
                    f'<div style="display:flex;gap:4px">{"".join(charts)}</div></figure>')
    body = (f"<h1>{esc(grid.name)}: spike gallery</h1><p class=\"meta\">{len(figs)} spikes · window "
            f"step ± {window}</p>{''.join(figs) or '<p>no spikes</p>'}")
    return _page(f"{grid.name}: spikes", body, refresh_s, "")


def write_dashboard(grid: F.GridData, out_dir: str | os.PathLike, *, window: int = 20,
                    refresh_s: float | None = None) -> Path:
    """Write the dashboard for `grid` under `out_dir`; returns the path of `index.html`.

    Run pages of runs no longer in the grid are removed. `refresh_s` turns on live mode (each page
    reloads itself every `refresh_s` seconds).
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs = grid.runs
    names = run_page_names(runs[F.RUN_ID].astype(str))
    curves = _Curves(grid)
    spikes = _spikes_with_anchors(grid, names)
    by_run = dict(iter(spikes.groupby(spikes[F.RUN_ID].astype(str), sort=False))) if len(spikes) else {}
    empty = spikes.iloc[0:0]
    seen = set()
    for _, run in runs.iterrows():
        rid = str(run[F.RUN_ID])
        if rid in seen:
            continue
        seen.add(rid)
        page = _run_page(grid, run, curves, by_run.get(rid, empty), refresh_s)
        atomic_write(out / "runs" / names[rid], page)
    current = set(names.values())
    for stale in (out / "runs").glob("*.html"):
        if stale.name not in current:
            stale.unlink(missing_ok=True)
    atomic_write(out / "spikes.html", _gallery(grid, spikes, curves, names, window, refresh_s))
    index = out / "index.html"
    atomic_write(index, _overview(grid, names, refresh_s))
    return index
