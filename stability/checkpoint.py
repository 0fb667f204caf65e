"""Atomic checkpoints with checksums: write, fsync, rename; never a half-written "latest".

A directory holds `step_{N:08d}.pt` files, each with a `.sha256` sidecar (digest and size), and
`latest.json` naming the newest. Loading verifies the digest and falls back to the previous good
checkpoint when the newest is truncated or corrupted. Files load with `weights_only=True`, so a
checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` as the checkpoint of `step`; keep the newest `keep` checkpoints."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {"sha256": _digest(tmp), "bytes": tmp.stat().st_size, "step": step}
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_atomic(path.with_suffix(".pt.sha256"), json.dumps(meta).encode())
    _write_atomic(d / "latest.json", json.dumps({"file": path.name, **meta}).encode())
    _fsync_dir(d)
    for old in list_checkpoints(d)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


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


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint that verifies, or None when there is none. Bad ones are reported."""
    for path in reversed(list_checkpoints(directory)):
        problem = verify(path)
        if problem:
            print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
            continue
        return torch.load(path, map_location=map_location, weights_only=True)
    return None
