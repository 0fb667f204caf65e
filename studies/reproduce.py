"""`stability reproduce`: plan, run and report every bundled study, then one report over them.

Resumable as the grids are: a rerun skips the cells that are done, recomputes the reports and
the findings table from MLflow, and keeps the growth-exponent probe's table once measured.
Three scales: the default CPU studies (olmo2-small, 300 steps), `quick` (olmo2-tiny, 120
steps, 3 seeds, three learning rates: the whole pipeline in about 15 minutes) and `gpu` (the
same studies on the olmo2-190M shape for 5000 steps, one GPU per cell: plan them here, run them
where GPUs are).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablations.plan import CPU_FLOPS, plan_rows, plan_totals
from ablations.spec import GridSpec, load_spec
from stability.config import ConfigError, load_config
from studies.catalog import STUDIES, Study

# A cell's process start, data, MLflow run, eval and artifacts, on this machine: `--quick` (66
# cells of olmo2-tiny) took 714 s of grids with 2 jobs against 504 s planned at 6 s per cell;
# 10.5 s fits it, and the full run (96 cells) comes out at ~43 min against 44 measured.
CELL_OVERHEAD_S = 10.0
REPORT_S_PER_STUDY = 20.0  # its report, figures at both widths (measured: 2.4 min for 7 studies)
# Two cells on two cores run 1.4x as fast as one after another, not 2x (measured: study_eps,
# 10 cells of 300 steps in 4.0 min with 2 jobs, estimated 5.6 min one after another).
PARALLEL_EFFICIENCY = 0.7
GPU_FLOPS = 160e12  # sustained bf16 FLOP/s of one H100-class GPU at ~40% MFU (OLMo-core's 1B)

SCALES: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "quick": ('preset="olmo2-tiny"', "budget.steps=120", "seeds=[0,1,2]", "base.probes.spike_window=40"),
    "gpu": ('preset="olmo2-190M"', "budget.steps=5000", "base.probes.spike_window=1000",
            "resources.gpus=1", "resources.cpus=8", "resources.mem_gb=32", "resources.time_min=120"),
}
SWEEP: dict[str, tuple[str, ...]] = {"quick": ("lrs=[3e-3,3e-2,3e-1]",)}  # grids with an lr sweep
GROWTH_SEEDS = {"cpu": (0, 1, 2, 3, 4), "quick": (0, 1, 2), "gpu": (0, 1, 2, 3, 4)}
GROWTH_WIDTHS = {"quick": (128, 256, 512), "gpu": (256, 512, 1024, 2048, 4096)}


@dataclass
class Planned:
    study: Study
    spec: GridSpec
    cells: int
    cpu_seconds: float  # one after another, overhead included
    pflops: float

    def seconds(self, jobs: int) -> float:
        """Wall time on this machine (`jobs` cells at a time), or on one GPU per cell."""
        if self.spec.gpus:
            return self.pflops * 1e15 / GPU_FLOPS + CELL_OVERHEAD_S * self.cells
        return self.cpu_seconds / (jobs * PARALLEL_EFFICIENCY if jobs > 1 else 1)


@dataclass
class Plan:
    scale: str
    studies: list[Planned] = field(default_factory=list)

    def seconds(self, jobs: int) -> float:
        return sum(p.seconds(jobs) for p in self.studies)


def study_spec(study: Study, scale: str = "cpu", extra: tuple[str, ...] = ()) -> GridSpec:
    """The grid of `study` at `scale`: its bundled spec, edited; the experiment is named
    `<study>` (cpu) or `<study>_<scale>`, so scales never mix in one experiment."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r} not in ({', '.join(SCALES)})")
    spec = load_spec(study.name)
    sweep = SWEEP.get(scale, ()) if spec.lrs else ()
    name = () if scale == "cpu" else (f'name="{study.name}_{scale}"',)
    return load_spec(study.name, [*SCALES[scale], *sweep, *name, *extra])


def make_plan(scale: str = "cpu", only: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Plan:
    known = [s.name for s in STUDIES]
    bad = [n for n in only if n not in known]
    if bad:
        raise ConfigError(f"--only: {', '.join(bad)} not in ({', '.join(known)})")
    plan = Plan(scale)
    for study in STUDIES:
        if only and study.name not in only:
            continue
        spec = study_spec(study, scale, extra)
        totals = plan_totals(plan_rows(spec))
        plan.studies.append(Planned(study, spec, totals["cells"],
                                    totals["cpu_seconds"] + CELL_OVERHEAD_S * totals["cells"],
                                    totals["pflops"]))
    return plan


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan, jobs: int) -> str:
    lines = [f"stability reproduce: {len(plan.studies)} studies at scale {plan.scale!r}", ""]
    header = f"{'study':<14} {'arms x seeds x lrs':<19} {'cells':>5} {'steps':>6}  {'preset':<12} est. time"
    lines += [header, "-" * len(header)]
    for p in plan.studies:
        s = p.spec
        shape = f"{len(s.arms)} x {len(s.seeds)} x {len(s.lrs) if s.lrs else 1}"
        lines.append(f"{p.study.name:<14} {shape:<19} {p.cells:>5} {s.budget.get('steps', 0):>6}  "
                     f"{s.preset:<12} {duration(p.seconds(jobs))}")
    total = sum(p.cells for p in plan.studies)
    gpu = any(p.spec.gpus for p in plan.studies)
    where = (f"GPU-time, one GPU per cell at ~{GPU_FLOPS / 1e12:.0f} TFLOP/s: run them where GPUs "
             "are" if gpu else
             f"{jobs} cell(s) at a time, ~{CPU_FLOPS / 1e9:.0f} GFLOP/s per thread + "
             f"{CELL_OVERHEAD_S:.0f} s per cell")
    reports = REPORT_S_PER_STUDY * len(plan.studies)
    lines += ["", f"total: {total} cells, ~{duration(plan.seconds(jobs))} ({where}); then a report "
                  f"per study, the growth-exponent probe and the findings table (~{duration(reports)})"]
    return "\n".join(lines)


def growth_table_for(plan: Plan, out: Path) -> pd.DataFrame | None:
    """Lambda vs d_model at init for both inits (`stability probe-init`), kept in `out` once
    measured (the probe is deterministic)."""
    study = next((p for p in plan.studies if p.study.growth_widths), None)
    if study is None:
        return None
    path = out / "growth_vs_width.csv"
    if path.is_file():
        return pd.read_csv(path)
    from stability.probes.growth import growth_table

    widths = list(GROWTH_WIDTHS.get(plan.scale, study.study.growth_widths))
    cfg = load_config(study.spec.preset)
    inits = [study.spec.baseline, *[a for a in study.spec.arms if a != study.spec.baseline]]
    table = growth_table(cfg, widths, [init_of(study.spec, a) for a in inits],
                         seeds=list(GROWTH_SEEDS[plan.scale]), batch_size=cfg.train.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return table


def init_of(spec: GridSpec, arm: str) -> str:
    """The init scheme `arm` trains with."""
    return spec.arm_config(arm).model.init


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


def run_studies(plan: Plan, *, jobs: int, tracking_uri: str | None, runs_dir: str,
                progress: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """Run every study's grid (cells already done are skipped); (wall seconds, status) per grid."""
    from ablations.backends import RunOptions, runner_for
    from ablations.grid_tracking import GridStore
    from ablations.status import cell_statuses
    from stability.store import RESULTS

    seconds, statuses = {}, {}
    for p in plan.studies:
        runner = runner_for("local", p.spec, RunOptions(jobs=jobs, tracking_uri=tracking_uri,
                                                         runs_dir=runs_dir, progress=progress))
        done = sum(c.status in RESULTS for c in cell_statuses(p.spec, GridStore(runner.uri, p.spec),
                                                               with_steps=False))
        print(f"[{p.spec.name}] {p.cells} cells, {p.cells - done} to run", flush=True)
        t0 = time.monotonic()
        outcome = runner.run()
        if done < p.cells:  # a grid done before took no time now: leave it out of the times
            seconds[p.spec.name] = time.monotonic() - t0
        statuses[p.spec.name] = outcome.status
        c = outcome.counts
        print(f"[{p.spec.name}] {outcome.status} ({', '.join(f'{v} {k}' for k, v in c.items() if v)}) "
              f"in {duration(time.monotonic() - t0)}", flush=True)
    return seconds, statuses
