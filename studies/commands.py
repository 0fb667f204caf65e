"""`stability reproduce`: the bundled studies of the OLMo 2 stability section, planned, run and
reported in one command (registered through the `stability.commands` entry points)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stability.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the studies reproducing the OLMo 2 report's stability "
                                         "section, then one report with the findings table")
    p.add_argument("--quick", action="store_true", help="the quick subset (~15 min on 2 cores): 120 "
                   "steps of olmo2-tiny, 3 seeds, 3 learning rates; same as --scale quick")
    p.add_argument("--scale", default="cpu", help="cpu (default, ~45 min on 2 cores), quick, or gpu "
                   "(the olmo2-190M shape, 5000 steps, one GPU per cell)")
    p.add_argument("--only", default="", metavar="STUDY[,STUDY]", help="some studies only, e.g. "
                   "study_init,study_lr (default: all)")
    p.add_argument("--plan", action="store_true", help="print the plan and its cost, run nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="edit every study's grid spec, e.g. --set budget.steps=500")
    p.add_argument("--jobs", type=int, help="cells at once (default: one per core)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="cell folders go to RUNS_DIR/<study>/<cell id>")
    p.add_argument("--out", help="report folder (default: results/reproduce[_<scale>])")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the CIs")
    p.add_argument("--no-progress", action="store_true", help="no progress display")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from stability.store import absolute_uri, resolve_uri
    from studies.reproduce import default_jobs, format_plan, growth_table_for, make_plan, run_studies

    scale = "quick" if args.quick else args.scale
    if args.quick and args.scale not in ("cpu", "quick"):
        raise ConfigError(f"--quick: not with --scale {args.scale}")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap: must be >= 100, got {args.bootstrap}")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    plan = make_plan(scale, only, tuple(args.overrides))
    jobs = args.jobs or default_jobs()
    print(format_plan(plan, jobs), flush=True)
    if args.plan:
        return 0
    if any(p.spec.gpus for p in plan.studies):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--scale: {scale!r} needs GPUs and this machine shows none "
                              "(--plan prints the plan anywhere)")
    uri = absolute_uri(resolve_uri(args.tracking_uri))
    out = Path(args.out or Path("results") / ("reproduce" if scale == "cpu" else f"reproduce_{scale}"))
    seconds, statuses = run_studies(plan, jobs=jobs, tracking_uri=uri, runs_dir=args.runs_dir,
                                    progress=not args.no_progress)
    print("growth exponents at init (probe-init) ...", flush=True)
    growth = growth_table_for(plan, out)
    from studies.report import write_reproduction

    command = " ".join(["stability reproduce", shlex.join(sys.argv[2:])]).strip()
    summary = write_reproduction(plan, uri, out, growth=growth, run_seconds=seconds, command=command,
                                 n_boot=args.bootstrap)
    print(f"report: {summary}")
    print((out / "findings.md").read_text())
    failed = [n for n, s in statuses.items() if s != "finished"]
    if failed:
        print(f"not every cell finished in: {', '.join(failed)} (rerun to continue)")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> dict:
    """`stability reproduce` (a `stability.commands` entry point)."""
    add_parser(sub)
    return {"reproduce": cmd_reproduce}
