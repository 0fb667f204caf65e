"""The `stability` command, composed from the packages' own subcommands.

Each package registers its commands through the `stability.commands` entry points
(pyproject.toml: this trainer's, the grid's, the reports'), so this module imports none of the
packages above it. Bad input (unknown key, wrong type, bad value, missing file) prints one line
naming the key and what is allowed, and exits with status 2 before anything is created. Only
`train`, `probe-init` and `grid run` import torch: the other commands, and `--help`, start
without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from model.config import ConfigError
from stability.stop import exit_code, signal_name

EXIT_CONFIG = 2
EXIT_CODES = ("exit status: 0 done; 1 a grid with failed cells, or a checkpoint / spool write that "
              "failed; 2 bad input; 128+N stopped by signal N, checkpointed and resumable (130 "
              "Ctrl-C, 143 SIGTERM)")
ENTRY_POINTS = "stability.commands"  # name -> "module:register"; the names order --help


def register_all(sub: argparse._SubParsersAction) -> list[str]:
    """Add every registered package's subcommands to `sub` (each knows its handler); their
    names in `--help` order."""
    names: list[str] = []
    for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        for name, handler in ep.load()(sub).items():
            sub.choices[name].set_defaults(handler=handler)
            names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stability", epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = register_all(sub)
    parser.description = f"The training-stability suite: {', '.join(names)}."
    return parser


def command_names() -> list[str]:
    """Every subcommand, in `--help` order."""
    return register_all(argparse.ArgumentParser().add_subparsers())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # `stability presets | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # disk full while writing a checkpoint or the spool: one line, no traceback
        from stability.checkpoint import CheckpointWriteError
        from stability.tracking_io import SpoolWriteError

        if not isinstance(exc, CheckpointWriteError | SpoolWriteError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a stop signal outside the training loop, or a second Ctrl-C
        hint = ("rerun the same command to continue the grid" if args.command == "grid"
                else "rerun with --resume to continue from the newest checkpoint, if there is one")
        code = exit_code(exc)
        print(f"interrupted ({signal_name(code - 128)}): {hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
