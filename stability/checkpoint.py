"""Atomic checkpoints with checksums: write, fsync, rename; never a half-written "latest".

A directory holds `step_{N:08d}.pt` files, each with a `.sha256` sidecar (digest and size), and
`latest.json` naming the newest. Loading verifies the digest and falls back to the previous good
checkpoint when the newest is truncated or corrupted. Files load with `weights_only=True`, so a
checkpoint from an untrusted source cannot run code: one that holds anything else is refused
(`UnsafeCheckpointError`, a `ConfigError`: the CLI prints one line and exits 2).

A write that is interrupted (a second Ctrl-C while the emergency checkpoint of a stop is written)
leaves the same: the temporary file is removed, the previous checkpoints are untouched.

A write that fails (disk full, ...) raises `CheckpointWriteError` (an `OSError`) whose one-line
message names the file and the reason; the temporary file is removed and nothing the loader reads
(`step_*.pt` with its sidecar, `latest.json`) is replaced, so the previous checkpoint stays usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch

from model.config import ConfigError

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoints are untouched."""


class UnsafeCheckpointError(ConfigError, pickle.UnpicklingError):
    """A checkpoint that holds more than tensors and plain data: refused, never unpickled."""


class _WriteWatch:
    """A file wrapper that keeps the first `OSError` of a write: `torch.save` reports a failed
    write (ENOSPC) as an unrelated `RuntimeError` ("unexpected pos ...")."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` as the checkpoint of `step`; keep the newest `keep` checkpoints.

    Raises `CheckpointWriteError` (one line naming the file) when the disk is full or any other
    write fails; the checkpoints written before stay as they were.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    watch: _WriteWatch | None = None
    replaced = False
    try:
        with tmp.open("wb") as f:
            watch = _WriteWatch(f)
            torch.save(state, watch)
            f.flush()
            os.fsync(f.fileno())
        meta = {"sha256": _digest(tmp), "bytes": tmp.stat().st_size, "step": step}
        try:
            os.replace(tmp, path)
        finally:  # also when an interrupt lands right after the rename
            replaced = not tmp.exists()
        write_atomic(path.with_suffix(".pt.sha256"), json.dumps(meta).encode())
        replaced = False  # complete: verifiable from here on
        write_atomic(d / "latest.json", json.dumps({"file": path.name, **meta}).encode())
        fsync_dir(d)
    except (OSError, RuntimeError) as exc:
        cause = exc if isinstance(exc, OSError) else watch.error if watch is not None else None
        if cause is None:
            raise
        if replaced:  # no sidecar: never leave an unverifiable newest checkpoint behind
            path.unlink(missing_ok=True)
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        err = CheckpointWriteError(f"checkpoint {path}: cannot write it ({reason}); the checkpoints "
                                   f"written before in {d} are kept")
        err.errno = cause.errno
        raise err from exc
    except BaseException:  # a second Ctrl-C during an emergency checkpoint: keep the previous one
        if replaced:
            path.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    for old in list_checkpoints(d)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    _remove_stale_temporaries(d)
    return path


def _remove_stale_temporaries(d: Path) -> None:
    """Delete the `.step_*` / `.latest.json` temporaries a killed writer left (one writer per
    folder: any pid but ours is gone)."""
    mine = f".tmp{os.getpid()}"
    for stale in [*d.glob(".step_*.tmp*"), *d.glob(".latest.json.tmp*")]:
        if stale.is_file() and not stale.name.endswith(mine):
            stale.unlink(missing_ok=True)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def verify(path: Path) -> str | None:
    """None when `path` matches its sidecar digest and size, else why not."""
    side = path.with_suffix(".pt.sha256")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return "missing or unreadable checksum file"
    size = path.stat().st_size
    if size != meta.get("bytes"):
        return f"size {size} bytes, expected {meta.get('bytes')} (truncated?)"
    if _digest(path) != meta.get("sha256"):
        return "checksum mismatch (corrupted)"
    return None


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that holds anything but tensors and plain data
    (a pickled object whose loading could run code) raises `UnsafeCheckpointError`, one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it references {found.group(1)}" if found else "it is not a weights-only file"
        raise UnsafeCheckpointError(
            f"checkpoint {path}: refused, {what}, and loading it could run code (only tensors and "
            "plain data are loaded); remove it to resume from an earlier checkpoint") from None


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint that verifies, or None when there is none. Bad ones are reported.

    A verified file that holds anything but tensors and plain data raises `UnsafeCheckpointError`
    (`load_file`) instead of being skipped: it came with a matching checksum, so someone put it
    there on purpose.
    """
    for path in reversed(list_checkpoints(directory)):
        problem = verify(path)
        if problem:
            print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
            continue
        return load_file(path, map_location)
    return None
