"""`stability grid status SPEC`: the arms x seeds (x lrs) matrix, from MLflow alone."""

from __future__ import annotations

from dataclasses import dataclass

from ablations.grid_tracking import CellRun, GridStore
from ablations.spec import Cell, GridSpec
from stability import metric_names as M
from stability.store import Tag, retry

STATUS_ORDER = ("finished", "diverged", "running", "interrupted", "failed", "pending")


@dataclass
class CellStatus:
    cell: Cell
    status: str  # finished | diverged | running | interrupted | failed | pending (no run yet)
    run_id: str | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    step: int | None = None  # last train/loss step (running, interrupted and failed cells)
    diverged_at_step: int | None = None


def cell_statuses(spec: GridSpec, store: GridStore, with_steps: bool = True) -> list[CellStatus]:
    """Every cell of `spec` with what its run in `store` says (pending when it has none)."""
    runs = store.cell_runs()
    out = []
    for cell in spec.cells():
        run: CellRun | None = runs.get(cell.cell_id)
        if run is None:
            out.append(CellStatus(cell, "pending"))
            continue
        st = CellStatus(cell, run.status if run.status in STATUS_ORDER else "running", run.run_id,
                        run.metrics.get(M.EVAL_LOSS), run.metrics.get(M.TRAIN_LOSS))
        if run.tags.get(Tag.DIVERGED_AT_STEP):
            st.diverged_at_step = int(float(run.tags[Tag.DIVERGED_AT_STEP]))
        if with_steps and st.status in ("running", "interrupted", "failed"):
            st.step = _last_step(store, run)
        out.append(st)
    return out


def _last_step(store: GridStore, run: CellRun) -> int | None:
    """The last step with a train/loss point: an interrupted run's tag says it (steps done)."""
    if run.status == "interrupted" and run.tags.get(Tag.INTERRUPTED_AT_STEP):
        return int(float(run.tags[Tag.INTERRUPTED_AT_STEP])) - 1
    history = retry(store.client.get_metric_history, run.run_id, M.TRAIN_LOSS)
    return max((m.step for m in history), default=None)


def counts(statuses: list[CellStatus]) -> dict[str, int]:
    found = {k: 0 for k in STATUS_ORDER}
    for s in statuses:
        found[s.status] = found.get(s.status, 0) + 1
    return found


def _cell_text(s: CellStatus) -> str:
    steps = s.cell.config.train.steps
    if s.status == "finished":
        return f"ok {s.eval_loss:.3f}" if s.eval_loss is not None else "ok"
    if s.status == "diverged":
        return f"DIV@{s.diverged_at_step}" if s.diverged_at_step is not None else "DIV"
    if s.status == "running":
        return f"run {0 if s.step is None else s.step + 1}/{steps}"
    if s.status == "interrupted":
        return f"stopped {0 if s.step is None else s.step + 1}/{steps}"
    if s.status == "failed":
        return "FAILED" if s.step is None else f"FAILED@{s.step}"
    return "-"


def format_matrix(spec: GridSpec, statuses: list[CellStatus]) -> str:
    """Rows: arms (baseline first, marked *); columns: seed (and lr when swept)."""
    multi_lr = len({s.cell.lr for s in statuses}) > 1
    cols: list[tuple[int, float]] = []
    for s in statuses:
        key = (s.cell.seed, s.cell.lr)
        if key not in cols:
            cols.append(key)
    cols.sort()
    col_names = [f"s{seed} lr{lr:g}" if multi_lr else f"seed {seed}" for seed, lr in cols]
    by = {(s.cell.arm, s.cell.seed, s.cell.lr): s for s in statuses}
    arms = [spec.baseline] + [a for a in spec.arms if a != spec.baseline]
    rows = [[("* " if arm == spec.baseline else "  ") + arm]
            + [_cell_text(by[(arm, seed, lr)]) if (arm, seed, lr) in by else "" for seed, lr in cols]
            for arm in arms]
    header = ["arm"] + col_names
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    total = counts(statuses)
    summary = ", ".join(f"{v} {k}" for k, v in total.items() if v)
    return "\n".join([f"grid {spec.name}: {len(statuses)} cells ({summary}); * = baseline, "
                      "ok = finished (final eval loss), stopped = interrupted (a rerun resumes it)",
                      line(header), *[line(r) for r in rows]])
