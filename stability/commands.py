"""The trainer package's commands: train, config, presets, probe-init, tracking replay.

Registered with the `stability` command through the `stability.commands` entry points
(pyproject.toml), like the grid's and the reports'. Bad input raises `ConfigError` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from model.config import ConfigError
from stability.stop import PRE_TIMEOUT_DEFAULT, exit_code

Handler = Callable[[argparse.Namespace], int]


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset, e.g. olmo2-small (see `stability presets`)")
    p.add_argument("--config", help="TOML run config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set optim.lr=1e-3 (repeatable)")




def _resolve(args: argparse.Namespace):
    from stability.config import load_config

    tracking = {key: getattr(args, flag) for flag, key in (
        ("tracking_uri", "uri"), ("experiment", "experiment"), ("run_name", "run_name"))
        if getattr(args, flag, None) is not None}
    return load_config(args.preset, args.config, args.overrides,
                       table={"tracking": tracking} if tracking else None)


def cmd_train(args: argparse.Namespace) -> int:
    from stability.stop import handling, raise_stopped, stop_signals

    signals = stop_signals(args.stop_signal)
    cfg = _resolve(args)  # bad input fails here, before the trainer's heavy imports
    with handling(signals, raise_stopped):  # before the first step: nothing to checkpoint, stop now
        return _train(cfg, args, signals)


def _train(cfg, args: argparse.Namespace, signals) -> int:
    import signal

    from stability.callbacks.tracking import TrackingCallback
    from stability.store import resolve_uri
    from stability.train import Trainer

    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress, stop_signals=signals)
    stats = trainer.data.stats
    print(f"run {trainer.run_name}: {trainer.model.num_params():,} params, "
          f"{stats.get('tokens', 0):,} tokens of {stats.get('source', cfg.data.corpus)}, "
          f"device {trainer.device}", file=sys.stderr)
    result = trainer.run()
    if result.stop_signal:
        print(f"status: interrupted by {result.stop_signal} after {result.steps} steps; checkpoint "
              f"written in {result.checkpoint_dir}; continue with the same command and --resume")
        return exit_code(signum=signal.Signals[result.stop_signal])
    print(f"status: {result.status} after {result.steps} steps"
          + (f" (diverged at step {result.diverged_at_step})" if result.diverged_at_step is not None
             else ""))
    if result.final_loss is not None:
        print(f"train/loss {result.final_loss:.4f}"
              + (f"  eval/loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
    print(f"checkpoints: {result.checkpoint_dir}")
    tracking = trainer.callbacks.find(TrackingCallback)
    if tracking is not None and tracking.tracker is not None:
        print(f"MLflow: {resolve_uri(cfg.tracking.uri)}  experiment '{cfg.tracking.experiment}'")
        print(f"look:   {tracking.tracker.url_hint()}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from stability.config import to_toml

    print(to_toml(_resolve(args)), end="")
    return 0


def cmd_presets(_: argparse.Namespace) -> int:
    from model.size import param_count
    from stability.config import run_preset
    from stability.presets import preset_names

    for name in preset_names():
        cfg = run_preset(name)
        m = cfg.model
        print(f"{name:18s} d_model {m.d_model:5d}  layers {m.n_layers:3d}  heads {m.n_heads:3d}  "
              f"vocab {m.vocab_size:6d}  params {_short_count(param_count(m)):>6s}  "
              f"steps {cfg.train.steps:6d}  batch {cfg.train.batch_size}x{cfg.train.seq_len}")
    return 0


def _short_count(n: int) -> str:
    """1_384_576 -> '1.38M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values) and flag != "--seeds":
        raise ConfigError(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return values


def cmd_probe_init(args: argparse.Namespace) -> int:
    from model.config import ModelConfig
    from stability.probes.growth import format_growth_table, growth_table

    cfg = _resolve(args)
    inits = [v.strip() for v in args.inits.split(",") if v.strip()]
    allowed = ModelConfig.CHOICES["init"]
    bad = [v for v in inits if v not in allowed]
    if bad or not inits:
        raise ConfigError(f"--inits: {', '.join(bad) or 'empty'} not in ({', '.join(allowed)})")
    widths = _int_list("--widths", args.widths)
    head_dim = cfg.model.head_dim
    if any(w % head_dim for w in widths):
        raise ConfigError(f"--widths: every width must be a multiple of head_dim {head_dim}")
    table = growth_table(cfg, widths, inits, seeds=_int_list("--seeds", args.seeds),
                         batch_size=cfg.train.batch_size, batches=args.batches)
    print(format_growth_table(table))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def cmd_tracking(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stability.tracking_io import replay_spool

    if not Path(args.spool).is_file():
        raise ConfigError(f"spool: file '{args.spool}' does not exist")
    sent = replay_spool(args.spool, args.tracking_uri)
    print(f"replayed {sent} metric points from {args.spool}")
    return 0


def register(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add this package's subcommands to `sub`; their handlers by name."""

    p = sub.add_parser("train", help="train one run and log it to MLflow")
    _config_args(p)
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    p.add_argument("--run-name", help="MLflow run name, also names the checkpoint folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint into the same MLflow run")
    p.add_argument("--stop-signal", default=PRE_TIMEOUT_DEFAULT, metavar="SIG[,SIG]",
                   help="besides SIGTERM and SIGINT, the signals that stop the run after the current "
                        "step with a checkpoint, e.g. Slurm's pre-timeout --signal (default "
                        f"{PRE_TIMEOUT_DEFAULT}; none: only TERM and INT)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("config", help="print the resolved config as TOML")
    _config_args(p)

    sub.add_parser("presets", help="list the named presets (sizes, budgets, parameter counts)")

    p = sub.add_parser("tracking", help="tracking utilities (replay a spool an outage left)")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    r = tsub.add_parser("replay", help="send a spool file of points a tracking outage left")
    r.add_argument("spool", help="the .jsonl spool file (printed when the run finished)")
    r.add_argument("--tracking-uri", help="where to send it (default: the URI in the spool)")

    p = sub.add_parser("probe-init", help="growth exponent lambda vs d_model per init scheme, "
                                          "at initialisation (no training)")
    _config_args(p)
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated d_model values")
    p.add_argument("--inits", default="normal,mitchell",
                   help="comma-separated init schemes (normal, mitchell, megatron, llama_depth, "
                        "fan_in)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (averaged)")
    p.add_argument("--batches", type=int, default=2, help="validation batches per model")
    p.add_argument("--csv", help="also write the table as CSV here")
    return {"train": cmd_train, "config": cmd_config, "presets": cmd_presets,
            "probe-init": cmd_probe_init, "tracking": cmd_tracking}
