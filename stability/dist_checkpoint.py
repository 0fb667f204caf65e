"""Sharded checkpoints of data-parallel runs, and the resume lookup over both checkpoint formats.

A data-parallel run (`stability.distributed`) saves `step_{N:08d}.dcp/`, a
`torch.distributed.checkpoint` (DCP) directory: model and optimizer state through
`get_state_dict` (FQN keys, each rank writes its shards), plus `trainer.pt` (the trainer's scalar
state, written by rank 0) and `complete.json` (`{"step": N, ...}`). Everything is written into
`.step_{N:08d}.dcp.tmp/` first, the marker last, then renamed: a directory without a marker
naming its step is never a checkpoint, so a half-written one is never "latest".

Single-process runs keep writing `step_{N:08d}.pt` (`stability.checkpoint`). Resuming takes the
newest complete checkpoint of either format, so a run can change its number of ranks: DCP
reshards on load (N ranks -> M ranks, or into a plain model), and a `.pt` loads into a sharded
model as a full state dict.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from stability.checkpoint import (
    fsync_dir,
    list_checkpoints,
    load_file,
    load_latest,
    verify,
    write_atomic,
)
from stability.distributed import DTensor

SHARDED = re.compile(r"^step_(\d{8})\.dcp$")
MARKER = "complete.json"
SCALARS = "trainer.pt"


def _is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def _ensure_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the moments of a fresh optimizer (zero grads, a step at lr 0: weights unchanged),
    so `get_optimizer_state_dict` has every entry a checkpoint fills."""
    if optimizer.state:
        return
    groups = optimizer.param_groups
    for group in groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in groups]
    for group in groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model),
            "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(directory: str | Path, step: int, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scalars: dict[str, Any], keep: int = 2) -> Path:
    """Collective (every rank calls it): the DCP checkpoint of `step`; keep the newest `keep`."""
    import torch.distributed.checkpoint as dcp

    d = Path(directory)
    final, tmp = d / f"step_{step:08d}.dcp", d / f".step_{step:08d}.dcp.tmp"
    rank0 = dist.get_rank() == 0
    if rank0:
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".step_*.dcp.tmp"):  # a crash inside an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=tmp)  # returns once every rank wrote
    if rank0:
        buf = io.BytesIO()
        torch.save(scalars, buf)
        write_atomic(tmp / SCALARS, buf.getvalue())
        write_atomic(tmp / MARKER, json.dumps({"step": step, "world_size": dist.get_world_size(),
                                                "format": "torch.distributed.checkpoint"}).encode())
        fsync_dir(tmp)
        if final.exists():  # the same step written again (a rerun): replace it
            old = d / f".step_{step:08d}.dcp.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(d)
        for stale in list_sharded(d)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def sharded_step(path: Path) -> int | None:
    """The step of a complete DCP checkpoint directory, else None."""
    m = SHARDED.match(path.name)
    if not m or not path.is_dir():
        return None
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    step = int(m.group(1))
    return step if marker.get("step") == step and (path / SCALARS).is_file() else None


def list_sharded(directory: str | Path) -> list[Path]:
    """Complete DCP checkpoint directories in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if sharded_step(p) is not None)


@dataclass
class Found:
    """A checkpoint to resume from: `state` has the scalars (and, for `.pt`, the weights)."""

    path: Path
    state: dict[str, Any]
    sharded: bool

    def load_weights(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Model and optimizer state into the live (plain or FSDP-sharded) objects."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if not self.sharded and not _is_sharded(model):  # the single-process format, as ever
            model.load_state_dict(self.state["model"])
            optimizer.load_state_dict(self.state["optimizer"])
            return
        _ensure_optimizer_state(optimizer)
        if self.sharded:
            import torch.distributed.checkpoint as dcp

            state = _dcp_state(model, optimizer)
            single = not (dist.is_available() and dist.is_initialized())
            with warnings.catch_warnings():  # the single-process load is intended here
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=self.path, no_dist=single)  # reshards to our ranks
            set_model_state_dict(model, state["model"])
            set_optimizer_state_dict(model, optimizer, state["optimizer"])
            return
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, self.state["model"], options=full)
        set_optimizer_state_dict(model, optimizer, _by_name(self.state["optimizer"], model, optimizer),
                                 options=full)


def _by_name(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
             ) -> dict[str, Any]:
    """A `torch.optim` state dict keyed by parameter index -> keyed by parameter name (FQN)."""
    names = {id(p): n for n, p in model.named_parameters()}
    live = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    fqn = {i: names[id(p)] for i, p in zip(saved, live)}
    return {"state": {fqn[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]}
                             for g in state["param_groups"]]}


def find_latest(directory: str | Path, map_location: str | torch.device = "cpu") -> Found | None:
    """The newest good checkpoint of either format (DCP wins a tie), or None.

    Files load through `stability.checkpoint` (`load_latest` / `load_file`: weights only, a
    hostile file is refused in one line); with no DCP checkpoint this is exactly `load_latest`.
    """
    d = Path(directory)
    sharded = list_sharded(d)
    if not sharded:
        state = load_latest(d, map_location)
        return None if state is None else Found(d / f"step_{int(state['step']):08d}.pt", state, False)
    best = sharded[-1]
    best_step = sharded_step(best)
    for path in reversed(list_checkpoints(d)):
        if int(path.name[5:13]) <= best_step:
            break
        problem = verify(path)
        if problem:
            print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
            continue
        return Found(path, load_file(path, map_location), False)
    return Found(best, load_file(best / SCALARS, map_location), True)


def read_sharded_weights(path: str | Path) -> dict[str, Any]:
    """The full (unsharded) model and optimizer state of a DCP checkpoint, without a process group
    (for tests and inspection): `{"model": {name: tensor}, "optimizer": {...}}`."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(path, out)
        return torch.load(out, weights_only=False)
