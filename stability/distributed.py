"""Data-parallel training under `torchrun`: process group, device per rank, FSDP2 sharding and the
collectives that make every logged value the global one.

`torchrun --nproc_per_node N -m stability train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them (a plain `stability train`) `data_parallel` returns `SingleProcess`, a world of size 1 whose
collectives are the identity and which adds no operation to the step, so the trainer has one code
path. With them:

- every rank builds the same model (same init stream), then `shard_model` applies FSDP2's
  `fully_shard` to each block and to the root (gloo and fp32 on CPU; NCCL and, when the precision
  resolves to bf16, bf16 parameters with fp32 gradient reduction on CUDA);
- `train.batch_size` is the global batch: rank r trains on rows [r B/N, (r+1) B/N) of the same
  stateless batch; its loss is weighted by its share of the batch's kept tokens, and FSDP sums
  (not averages) the gradients, so they equal the single-process ones;
- per-tensor squared gradient norms of the local shards and the loss parts go into ONE
  all-reduce (SUM); clipping, the skip-step factor and divergence read-outs then see the same
  global values on every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from model.config import ConfigError
from stability.data import Batch
from stability.loss import IGNORE_INDEX, LossParts

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support
    DTensor = ()  # type: ignore[assignment,misc]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun for every worker


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ENV_VARS)


def is_rank0() -> bool:
    """True in a single-process run and on rank 0 of a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: in-place updates reach the DTensor); else `t`."""
    return t.to_local() if isinstance(t, DTensor) else t


def resolve_device(name: str) -> torch.device:
    """`train.device` as a device (`data_parallel` then picks the rank's GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available "
                          "(allowed here: auto, cpu)")
    return torch.device(name)


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ConfigError(f"train.batch_size: {batch_size} is the global batch and must be divisible "
                          f"by the number of ranks {world_size}")


def rows_of(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `n` rows (equal shares when N divides n)."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def shard_model(model: nn.Module, cfg) -> nn.Module:
    """FSDP2 in place: `fully_shard` each transformer block, then the root; returns `model`.

    Gradients are summed across ranks (divide factor 1, SUM collectives: gloo has no
    PREMUL_SUM), because each rank's loss is already its share of the global mean.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh}
    precision = cfg.train.precision
    if device.type == "cuda" and precision in ("auto", "bf16"):  # auto resolves to bf16 on CUDA
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "features")  # the trainer calls features(), not forward()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def data_parallel(cfg, device: torch.device) -> tuple[World, torch.device]:
    """(the run's `DataParallel`, its device) under torchrun; (`SingleProcess()`, `device`) else."""
    if not launched_by_torchrun():
        return SingleProcess(), device
    if not dist.is_available():
        raise ConfigError("torchrun: this torch build has no torch.distributed (run without torchrun)")
    world_size = int(os.environ["WORLD_SIZE"])
    check_global_batch(cfg.train.batch_size, world_size)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return DataParallel(dist.get_rank(), dist.get_world_size(), local_rank, device), device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class LocalStep:
    """A single process's step: the loss as it is, local norms (no reduction), local parts."""

    def __init__(self, parts: LossParts) -> None:
        self.parts = parts
        self.loss = parts.loss  # what backward runs on
        self.reduce_sq = None  # clip_grad_norm_ reduces nothing

    def global_parts(self) -> LossParts:
        return self.parts


class SingleProcess:
    """A world of size 1: the same interface as `DataParallel`, every collective the identity."""

    rank, world_size, local_rank, is_rank0 = 0, 1, 0, True

    def rank0_first(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def local_batch(self, batch: Batch) -> Batch:
        return batch

    def step_sync(self, parts: LossParts, local: Batch, batch: Batch) -> LocalStep:
        return LocalStep(parts)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def eval_sums(self, total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        return total, count

    def agree(self, flag: bool, at_read_out: bool) -> bool:
        """A stop takes effect after any step."""
        return flag

    def unsharded(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass(eq=False)
class DataParallel:
    """This rank's place in the data-parallel group and the trainer's collectives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the body first (e.g. fills a disk cache), then the others."""
        if not self.is_rank0:
            dist.barrier()
        yield
        if self.is_rank0:
            dist.barrier()

    # ------------------------------------------------------------------ batches and the loss
    def local_batch(self, batch: Batch) -> Batch:
        """This rank's rows of the global `batch` (the n-gram mask count stays the global one)."""
        rows = rows_of(batch.input_ids.shape[0], self.rank, self.world_size)
        return Batch(batch.input_ids[rows], batch.labels[rows], batch.doc_ids[rows], batch.n_masked)

    @staticmethod
    def loss_share(local: Batch, batch: Batch) -> float:
        """Weight of this rank's mean loss in the global mean: its kept tokens / the batch's.

        Counted on the host from the global batch every rank holds (the value an all-reduce of
        the local counts would give, without a collective or a device sync).
        """
        kept = int((batch.labels != IGNORE_INDEX).sum())
        return int((local.labels != IGNORE_INDEX).sum()) / max(kept, 1)

    def step_sync(self, parts: LossParts, local: Batch, batch: Batch) -> PackedSum:
        """This rank's loss weighted by its share of the kept tokens, and the one all-reduce that
        makes the norms and loss parts the global batch's (`PackedSum`)."""
        return PackedSum(self, parts, self.loss_share(local, batch))

    def agree(self, flag: bool, at_read_out: bool) -> bool:
        """Whether any rank's `flag` is set; asked only at read-outs, where the host syncs anyway,
        so every rank stops at the same step (the checkpoint is collective) and none waits."""
        if not at_read_out:
            return False
        return bool(self.sum_(torch.tensor(float(flag), device=self.device)).item() > 0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (SUM) in place; returns `t`."""
        dist.all_reduce(t)
        return t

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of equal-sized local means (one SUM all-reduce)."""
        return self.sum_(t).div_(self.world_size)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (MAX) in place; returns `t`."""
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equal-shaped `t` along dim 0 in rank order (all-gather)."""
        out = torch.empty((self.world_size * t.shape[0], *t.shape[1:]), dtype=t.dtype,
                          device=t.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch < 2.13
        gather(out, t.contiguous())
        return out

    def eval_sums(self, total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        """Global (sum of CE * kept tokens, kept tokens) from this rank's."""
        both = self.sum_(torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64,
                                                                   device=total.device)]))
        return both[0].to(total.dtype), int(both[1])

    # ------------------------------------------------------------------ probes
    @contextlib.contextmanager
    def unsharded(self, model: nn.Module) -> Iterator[None]:
        """Blocks stay all-gathered after the forward inside (probes that call block submodules
        directly, e.g. attention statistics); resharded on exit."""
        blocks = list(model.blocks)
        for block in blocks:
            block.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for block in blocks:
                block.reshard()
                block.set_reshard_after_forward(True, recurse=False)


class PackedSum:
    """Callable for `clip_grad_norm_(..., reduce_sq=...)`: sums the local per-tensor squared
    gradient norms AND this rank's shares of the loss parts in ONE all-reduce; `global_parts()`
    then returns the global `LossParts` (log Z gathered, so its mean and max are the batch's)."""

    def __init__(self, dp: DataParallel, parts: LossParts, share: float) -> None:
        self.dp, self.parts = dp, parts
        self.loss = parts.loss * share  # what backward runs on: this rank's share of the mean
        self.reduce_sq = self  # clip_grad_norm_ sums the squared norms through __call__
        values = [parts.loss, parts.ce, parts.z_loss, parts.z_loss_raw]
        extra = torch.stack([v.detach().float() for v in values]) * share
        if parts.logit_mean is not None:  # a mean over equal local row counts
            extra = torch.cat([extra, parts.logit_mean.detach().float().view(1) / dp.world_size])
        self.extra = extra

    def __call__(self, sq: torch.Tensor) -> torch.Tensor:
        packed = self.dp.sum_(torch.cat([sq, self.extra.to(sq.device)]))
        self.extra = packed[sq.shape[0]:]
        return packed[:sq.shape[0]]

    def global_parts(self) -> LossParts:
        p, e = self.parts, self.extra
        log_z = p.log_z.detach()
        rows = log_z.reshape(log_z.shape[0], -1)
        max_abs = None
        if p.logit_max_abs is not None:  # one gather for log Z and the max |logit|
            col = p.logit_max_abs.detach().float().reshape(1, 1).expand(rows.shape[0], 1)
            rows = torch.cat([rows, col], dim=1)
        rows = self.dp.gather_rows(rows)
        if p.logit_max_abs is not None:
            max_abs, rows = rows[:, -1].amax(), rows[:, :-1]
        log_z = rows.reshape(-1, *log_z.shape[1:])
        return LossParts(e[0], e[1], e[2], e[3], log_z, max_abs,
                         e[4] if p.logit_mean is not None else None)


World = SingleProcess | DataParallel
