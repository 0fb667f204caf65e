"""`stability grid plan|run|status`: the grid subcommands, registered with the command through
the `stability.commands` entry points (pyproject.toml)."""

from __future__ import annotations

import argparse

SPEC_HELP = "a spec file, or a bundled grid's name (quick, olmo2_section3, lr_sensitivity)"


def add_grid_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grid", help="paired ablation grids: plan, run, status (ablations/grids/*.toml)")
    gsub = p.add_subparsers(dest="grid_command", required=True)

    def spec_args(g: argparse.ArgumentParser) -> None:
        g.add_argument("spec", help=SPEC_HELP)
        g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="edit the spec, e.g. --set preset=\"olmo2-1b\" --set seeds=[0,1,2]")

    spec_args(gsub.add_parser("plan", help="print the cells (arm, seed, lr, cell id) and the cost"))

    g = gsub.add_parser("run", help="run every cell not yet done (resumable: rerun to continue; "
                                    "SIGTERM / Ctrl-C checkpoints the running cells)")
    spec_args(g)
    g.add_argument("--jobs", type=int, help="cells at once (default: one per GPU; on CPU, cores / "
                                            "resources.cpus, else 1)")
    g.add_argument("--backend", default="local", help="local (worker processes here), slurm "
                   "(a submitit job array), submitit-local (submitit's local executor: the Slurm "
                   "code path on this machine)")
    g.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db); Slurm needs a server")
    g.add_argument("--runs-dir", default="runs", help="cell folders go to RUNS_DIR/<grid>/<cell id>")
    g.add_argument("--slurm", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                   help="extra submitit/Slurm parameter, e.g. --slurm slurm_partition=gpu")
    g.add_argument("--no-progress", action="store_true", help="no progress display")

    g = gsub.add_parser("status", help="the arms x seeds matrix of a grid, from MLflow alone")
    spec_args(g)
    g.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db)")


def cmd_grid(args: argparse.Namespace) -> int:
    from ablations.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.grid_command == "plan":
        from ablations.plan import format_plan

        print(format_plan(spec))
        return 0
    if args.grid_command == "status":
        return _status(spec, args.tracking_uri)
    return _run(spec, args)


def _status(spec, uri: str | None) -> int:
    from ablations.grid_tracking import GridStore
    from ablations.status import cell_statuses, format_matrix
    from stability.store import absolute_uri, resolve_uri

    store = GridStore(absolute_uri(resolve_uri(uri)), spec)
    print(format_matrix(spec, cell_statuses(spec, store)))
    return 0


def _run(spec, args: argparse.Namespace) -> int:
    import signal

    from ablations.backends import RunOptions, runner_for
    from stability.stop import raise_stopped, stop_signals

    runner = runner_for(args.backend, spec, RunOptions(
        jobs=args.jobs, tracking_uri=args.tracking_uri, runs_dir=args.runs_dir,
        progress=not args.no_progress, slurm_params=args.slurm_params))
    for sig in stop_signals():  # the runner passes them on to its cells (ablations.runner)
        signal.signal(sig, raise_stopped)
    outcome = runner.run()
    uri = runner.uri
    c = outcome.counts
    print(f"grid {spec.name}: {outcome.status} ({', '.join(f'{v} {k}' for k, v in c.items() if v)})")
    print(f"MLflow: {uri}  experiment '{spec.name}', parent run {outcome.parent_run_id}")
    print(f"look:   {_ui_hint(uri, spec.name)}")
    print(f"next:   stability grid status {args.spec}   (the matrix)")
    return 0 if outcome.status == "finished" else 1


def _ui_hint(uri: str, experiment: str) -> str:
    """The MLflow UI page of the grid's experiment, on its runs view."""
    from stability import store

    client = store.client(uri)
    exp = store.retry(client.get_experiment_by_name, experiment)
    return store.ui_hint(uri, exp.experiment_id if exp else "0")


def register(sub: argparse._SubParsersAction) -> dict:
    """The `stability grid ...` commands (a `stability.commands` entry point)."""
    add_grid_parser(sub)
    return {"grid": cmd_grid}
