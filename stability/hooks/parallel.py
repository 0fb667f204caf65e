"""A foreign loop's data parallelism, as the hooks see it: which rank logs, and the one
all-reduce per step that makes the logged loss and gradient norms the whole model's.

- DDP: the gradients are already averaged over ranks when the loop steps, so the per-tensor norms
  each rank reads are the global ones; only the loss is this rank's micro-batch's, and is averaged.
- FSDP2 (`fully_shard`: parameters and gradients are DTensor shards): each rank reads its shards'
  norms, so the squared norms are summed over ranks, packed with the loss into the same
  all-reduce. The probe rows (parameter, update and activation statistics) reduce through the
  trainer's own `DataParallel` collectives, as in our FSDP2 trainer.

Only rank 0 tracks and writes artifacts; every rank computes its rows, so the collectives match.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from stability.distributed import DataParallel


class Replicated(DataParallel):
    """The probe collectives under DDP: parameters, moments and gradients are the same on every
    rank, so their sums and maxima are this rank's (no collective); activations are per rank and
    are averaged (one all-reduce, as the trainer's)."""

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t.div_(self.world_size)

    def unsharded(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a `DistributedDataParallel` wraps (its blocks are the model's); else `model`."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(params: list[nn.Parameter]) -> bool:
    """Whether the parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


@dataclass(eq=False)
class HookWorld:
    """This process's place in the loop's process group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    sharded: bool = False  # FSDP2: gradients and parameters are shards

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def probe_dp(self, device: torch.device) -> DataParallel | None:
        """The collectives the probe rows reduce through: the trainer's for sharded parameters,
        `Replicated` under DDP, none in a single process."""
        if self.world_size == 1:
            return None
        local = device.index if device.type == "cuda" and device.index is not None else 0
        kind = DataParallel if self.sharded else Replicated
        return kind(self.rank, self.world_size, local, device)

    def reduce(self, norms: list[torch.Tensor], loss: torch.Tensor
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(global per-tensor gradient norms, mean loss over ranks) in one all-reduce."""
        if self.world_size == 1:
            return norms, loss
        sq = torch.stack(norms).float().square() if self.sharded else loss.new_zeros(0)
        packed = torch.cat([sq, loss.detach().float().reshape(1) / self.world_size])
        dist.all_reduce(packed)
        out = list(packed[:-1].sqrt().unbind()) if self.sharded else norms
        return out, packed[-1]


def hook_world(params: list[nn.Parameter]) -> HookWorld:
    """The process group the loop runs in (none initialised: a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return HookWorld()
    return HookWorld(dist.get_rank(), dist.get_world_size(), is_sharded(params))
