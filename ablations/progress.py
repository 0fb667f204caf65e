"""The grid-level progress display: one bar over every cell's steps, with cells done / running /
diverged / failed, live spike count, tokens/s and ETA; one line per cell as it ends."""

from __future__ import annotations

import sys

from ablations.spec import Cell


class GridProgress:
    """Fed by the runner: `started`, `ended`, and `update` with each running cell's progress.json."""

    def __init__(self, name: str, cells: list[Cell], done: dict[str, str], jobs: int, threads: int,
                 enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.steps = {c.cell_id: c.config.train.steps for c in cells}
        self.tokens_per_step = {c.cell_id: c.config.train.batch_size * c.config.train.seq_len for c in cells}
        self.status = dict(done)  # cell id -> finished | diverged | failed | busy
        self.live: dict[str, dict] = {}
        self.spikes_done = 0
        skipped = sum(self.steps[c] for c, s in done.items() if s in ("finished", "diverged"))
        total = sum(self.steps.values())
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=skipped, unit="step", dynamic_ncols=True, disable=not enabled,
                        file=sys.stderr, desc=f"grid {name}", smoothing=0.1)
        self._base = skipped
        if enabled:
            todo = len(cells) - len([s for s in done.values() if s in ("finished", "diverged")])
            self.bar.write(f"grid {name}: {len(cells)} cells, {len(cells) - todo} already done, {todo} to "
                           f"run; {jobs} worker(s) x {threads} thread(s)")
        self._postfix = ""
        self._refresh()

    def started(self, cell: Cell) -> None:
        self.live[cell.cell_id] = {}
        self._refresh()

    def ended(self, cell: Cell, status: str, result: dict) -> None:
        last = self.live.pop(cell.cell_id, {})
        self.spikes_done += int(last.get("spikes") or 0)
        self.status[cell.cell_id] = status
        if status in ("finished", "diverged", "failed"):
            self._base += self.steps[cell.cell_id]
        detail = ""
        if status == "finished" and result.get("eval_loss") is not None:
            detail = f" eval loss {result['eval_loss']:.3f}"
        elif status == "diverged":
            detail = f" at step {result.get('diverged_at_step')}"
        elif status == "failed":
            detail = f": {result.get('error', 'see traceback.txt in the run')}"
        if self.enabled:
            self.bar.write(f"  {status:8s} {cell.arm} seed {cell.seed} lr {cell.lr:g}{detail}")
        self._refresh()

    def update(self, progress: dict[str, dict]) -> None:
        for cid, p in progress.items():
            if p:
                self.live[cid] = p
        self._refresh()

    def _refresh(self) -> None:
        live_steps = sum(int(p.get("step") or 0) for p in self.live.values())
        n = min(self.bar.total, self._base + live_steps)
        tok_s = sum(float(p.get("tokens_per_s") or 0.0) for p in self.live.values())
        spikes = self.spikes_done + sum(int(p.get("spikes") or 0) for p in self.live.values())
        c = {k: sum(1 for s in self.status.values() if s == k) for k in ("finished", "diverged", "failed")}
        postfix = (f"done {c['finished']} | running {len(self.live)} | diverged {c['diverged']} | failed "
                   f"{c['failed']} | spikes {spikes} | {tok_s:,.0f} tok/s")
        if postfix != self._postfix:  # redraw only when something changed (logs stay short)
            self._postfix = postfix
            self.bar.set_postfix_str(postfix, refresh=False)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)  # tqdm's own rate limit and ETA
        elif n < self.bar.n:  # a resumed cell restarted from its checkpoint
            self.bar.n = n
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
