"""Graceful stops: the signals that end a run at a step boundary, resumably.

Slurm sends SIGTERM on preemption and at the time limit, and a user signal before it when asked
(`sbatch --signal=USR1@120`); a person presses Ctrl-C (SIGINT). While a `Trainer` runs, the first
of its stop signals only sets a flag: the current step ends, the step buffer is read out, a
checkpoint is written whatever `train.checkpoint_every` says, the run is marked `interrupted`,
and the process exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A repeat
of a non-SIGINT signal (a launcher passing on what the process already got) is ignored; a second
SIGINT abandons the emergency checkpoint (the previous one stays: writes are atomic).

Outside the training loop (building the data and the model) a stop signal raises `Stopped`, a
`KeyboardInterrupt`, so that a process with nothing to checkpoint yet ends at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType

from model.config import ConfigError

ALWAYS = (signal.SIGTERM, signal.SIGINT)
# The pre-timeout signals caught by default: both user signals (Slurm's `--signal`; submitit's
# preemption signal is USR2), whose default action would kill the process without a checkpoint.
PRE_TIMEOUT_DEFAULT = "USR1,USR2"
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


class Stopped(KeyboardInterrupt):
    """A stop signal where no step can be finished first (or a second Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(exc: BaseException | None = None, signum: int | None = None) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    if signum is None:
        signum = getattr(exc, "signum", signal.SIGINT)
    return 128 + int(signum)


def parse_signals(text: str, flag: str = "--stop-signal") -> tuple[signal.Signals, ...]:
    """"USR1,USR2" / "SIGHUP" / "none" -> signals; an unknown or uncatchable name is a ConfigError."""
    if text.strip().lower() in ("", "none"):
        return ()
    found = []
    for raw in text.split(","):
        name = raw.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        sig = getattr(signal.Signals, name, None)
        if sig is None or sig in _UNCATCHABLE:
            raise ConfigError(f"{flag}: {raw.strip()!r} is not a signal that can be caught (e.g. USR1, "
                              "USR2, HUP, XCPU; comma-separated, or none)")
        found.append(sig)
    return tuple(dict.fromkeys(found))


def stop_signals(extra: str = PRE_TIMEOUT_DEFAULT) -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and the pre-timeout signals named in `extra`."""
    return tuple(dict.fromkeys((*ALWAYS, *parse_signals(extra))))


class StopRequest:
    """The flag a signal handler sets and the training loop reads between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal_name(self.signum) if self.signum is not None else None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:  # a second Ctrl-C: stop writing the checkpoint too
            raise Stopped(signum)


def raise_stopped(signum: int, frame: FrameType | None) -> None:
    """A handler that ends what is under way at once (nothing to checkpoint yet)."""
    raise Stopped(signum)


@contextlib.contextmanager
def handling(signals: Iterable[int], handler) -> Iterator[None]:
    """`handler` for `signals` inside the block, the previous handlers after it. Only the main
    thread can install handlers: elsewhere (a trainer run in a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
