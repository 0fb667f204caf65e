"""The grid-level progress display: one bar over every cell's steps, with cells done / running /
diverged / failed / interrupted, live spike count, tokens/s and ETA; one line per cell as it ends.

The bar is drawn only on a terminal. Elsewhere (a log file, a pipe, CI) the display is the cell
lines alone: a bar there is redrawn with carriage returns and cleared with runs of spaces around
every line, which a log shows as lines of whitespace.
"""

from __future__ import annotations

import sys

from ablations.spec import Cell

RESULTS = ("finished", "diverged")
COUNTED = ("finished", "diverged", "failed", "interrupted")


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class GridProgress:
    """Fed by the runner: `started`, `ended`, and `update` with each running cell's progress.json."""

    def __init__(self, name: str, cells: list[Cell], done: dict[str, str], jobs: int, threads: int,
                 enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.steps = {c.cell_id: c.config.train.steps for c in cells}
        self.status = dict(done)  # cell id -> finished | diverged | failed | interrupted | busy
        self.live: dict[str, dict] = {}
        self.spikes_done = 0
        skipped = sum(self.steps[c] for c, s in done.items() if s in RESULTS)
        self.enabled = enabled
        self.bar = tqdm(total=sum(self.steps.values()), initial=skipped, unit="step", dynamic_ncols=True,
                        disable=not (enabled and _is_terminal(sys.stderr)), file=sys.stderr,
                        desc=f"grid {name}", smoothing=0.1)
        self._base = skipped
        todo = len(cells) - len([s for s in done.values() if s in RESULTS])
        self._line(f"grid {name}: {len(cells)} cells, {len(cells) - todo} already done, {todo} to "
                   f"run; {jobs} worker(s) x {threads} thread(s)")
        self._postfix = ""
        self._refresh()

    def _line(self, text: str) -> None:
        """One line on stdout: through tqdm (which clears and redraws its bar) when it is drawn."""
        if not self.enabled:
            return
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text, file=sys.stdout)

    def started(self, cell: Cell) -> None:
        self.live[cell.cell_id] = {}
        self._refresh()

    def ended(self, cell: Cell, status: str, result: dict) -> None:
        last = self.live.pop(cell.cell_id, {})
        self.spikes_done += int(last.get("spikes") or 0)
        self.status[cell.cell_id] = status
        if status in ("finished", "diverged", "failed"):
            self._base += self.steps[cell.cell_id]
        self._line(f"  {status:8s} {cell.arm} seed {cell.seed} lr {cell.lr:g}{_detail(status, result, last)}")
        self._refresh()

    def update(self, progress: dict[str, dict]) -> None:
        for cid, p in progress.items():
            if p:
                self.live[cid] = p
        self._refresh()

    def _refresh(self) -> None:
        if self.bar.disable:
            return
        live_steps = sum(int(p.get("step") or 0) for p in self.live.values())
        n = min(self.bar.total, self._base + live_steps)
        tok_s = sum(float(p.get("tokens_per_s") or 0.0) for p in self.live.values())
        spikes = self.spikes_done + sum(int(p.get("spikes") or 0) for p in self.live.values())
        c = {k: sum(1 for s in self.status.values() if s == k) for k in COUNTED}
        postfix = (f"done {c['finished']} | running {len(self.live)} | diverged {c['diverged']} | failed "
                   f"{c['failed']}" + (f" | interrupted {c['interrupted']}" if c["interrupted"] else "")
                   + f" | spikes {spikes} | {tok_s:,.0f} tok/s")
        if postfix != self._postfix:  # redraw only when something changed
            self._postfix = postfix
            self.bar.set_postfix_str(postfix, refresh=False)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)  # tqdm's own rate limit and ETA
        elif n < self.bar.n:  # a resumed cell restarted from its checkpoint
            self.bar.n = n
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _detail(status: str, result: dict, last: dict) -> str:
    """What follows a cell's status on its line."""
    if status == "finished" and result.get("eval_loss") is not None:
        return f" eval loss {result['eval_loss']:.3f}"
    if status == "diverged":
        return f" at step {result.get('diverged_at_step')}"
    if status == "failed":
        return f": {result.get('error', 'see traceback.txt in the run')}"
    if status == "interrupted":
        step = result.get("steps", last.get("step"))
        by = f" by {result['signal']}" if result.get("signal") else ""
        return (f" at step {step}" if step is not None else "") + f"{by}; a rerun resumes it"
    return ""
