"""`stability report` and `stability dashboard`: parsers and handlers, registered with the command
through the `stability.commands` entry points (pyproject.toml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.config import ConfigError

SOURCE_HELP = ("a grid spec file or bundled grid name (quick, ...), or an MLflow experiment name")
URI_HELP = "MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


def add_report_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="paired statistics, tables and figures of a grid or experiment")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--out", help="output folder (default: results/<name>/report)")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument("--test", default="wilcoxon", help="paired test: wilcoxon (default) or ttest")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the CIs")
    p.add_argument("--no-attach", action="store_true", help="do not attach the report to the grid's "
                                                             "parent run in MLflow")

    p = sub.add_parser("dashboard", help="the interactive spike dashboard of a grid or experiment")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--out", help="static export folder (default: results/<name>/dashboard)")
    p.add_argument("--tracking-uri", help=URI_HELP)
    p.add_argument("--window", type=int, default=20, help="spike view: steps either side of a spike")
    p.add_argument("--serve", action="store_true", help="serve it on localhost instead, live while runs "
                                                        "write (reads the store only; Ctrl-C stops)")
    p.add_argument("--host", default="127.0.0.1", help="with --serve: the address to bind (default "
                                                       "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port (default: a free one)")
    p.add_argument("--poll", "--refresh", dest="poll", type=float, default=2.0,
                   help="with --serve: seconds between looks at the store, and between the page's "
                        "polls (default 2; --refresh is its old name)")
    p.add_argument("--no-attach", action="store_true", help="do not attach the dashboard to the "
                                                             "grid's parent run in MLflow")


def _load(args: argparse.Namespace):
    from reports.load import load_grid
    from stability.store import absolute_uri, resolve_uri

    uri = absolute_uri(resolve_uri(args.tracking_uri))
    grid = load_grid(args.source, uri)
    if grid.runs.empty:
        raise ConfigError(f"source: no runs found for {args.source!r} in {uri}")
    return grid, uri


def cmd_report(args: argparse.Namespace) -> int:
    from reports.report import attach_to_mlflow, build_report

    if args.test not in ("wilcoxon", "ttest"):
        raise ConfigError(f"--test: {args.test!r} not in (wilcoxon, ttest)")
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap: must be >= 100, got {args.bootstrap}")
    grid, uri = _load(args)
    out = Path(args.out or Path("results") / grid.name / "report")
    report = build_report(grid, out, test=args.test, n_boot=args.bootstrap)
    print(f"report: {out / 'summary.md'} ({len(report.paths)} files)")
    print(report.headline)
    if not args.no_attach and (run := attach_to_mlflow(grid, out, uri, "report")):
        print(f"attached to MLflow run {run} under report/")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise ConfigError(f"--window: must be >= 1, got {args.window}")
    if not args.poll > 0:
        raise ConfigError(f"--poll: must be > 0 seconds, got {args.poll}")
    grid, uri = _load(args)
    if args.serve:
        from reports.load import load_grid
        from reports.serve import mlflow_probe, serve_dashboard

        serve_dashboard(lambda: load_grid(grid.name, uri), port=args.port, host=args.host,
                        poll_s=args.poll, window=args.window, probe=mlflow_probe(uri, grid.name), first=grid)
        return 0
    from reports.dashboard import write_dashboard
    from reports.report import attach_to_mlflow

    out = Path(args.out or Path("results") / grid.name / "dashboard")
    index = write_dashboard(grid, out, window=args.window)
    print(f"dashboard: {index.resolve().as_uri()}")
    if not args.no_attach and (run := attach_to_mlflow(grid, out, uri, "dashboard")):
        print(f"attached to MLflow run {run} under dashboard/")
    return 0


def register(sub: argparse._SubParsersAction) -> dict:
    """`stability report` and `stability dashboard` (a `stability.commands` entry point)."""
    add_report_parsers(sub)
    return {"report": cmd_report, "dashboard": cmd_dashboard}
