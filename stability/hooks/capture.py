"""What a hook reads from a loop it does not own, kept on device: per-tensor gradient norms,
the blocks' outputs at probe steps and the model's loss.

Gradient norms are read either when the loop says so (`GradNorms.read`, after backward and
before its own clipping) or as each gradient is accumulated (`GradNorms.watch`): a host such as
the HF Trainer clips between backward and the first callback, and the pre-clip norm is the one
the spike rules and the trainer log. No function here syncs with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stability.distributed import local_tensor
from stability.probes.sublayers import tensor_of


class GradNorms:
    """Per-tensor L2 norms of `params`' gradients for one optimizer step ([P] on device)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.device = self.params[0].device
        self._norms: torch.Tensor | None = None
        self._handles: list[Any] = []

    def read(self) -> None:
        """Norms of the gradients as they are now (a parameter without a gradient: 0; an FSDP2
        shard: its local part's)."""
        grads = [local_tensor(p.grad) for p in self.params if p.grad is not None]
        if len(grads) == len(self.params):
            self._norms = torch.stack([n.float() for n in torch._foreach_norm(grads, 2.0)])
            return
        norms = torch.zeros(len(self.params), device=self.device)
        for i, p in enumerate(self.params):
            if p.grad is not None:
                norms[i] = torch.linalg.vector_norm(local_tensor(p.grad))
        self._norms = norms

    def watch(self) -> None:
        """From now on, write each gradient's norm when backward has accumulated it (a later
        micro-batch overwrites an earlier one: the last is the accumulated gradient)."""
        for i, p in enumerate(self.params):
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(p: torch.Tensor) -> None:  # must return None (else it replaces the grad)
            if p.grad is not None:
                self._slot()[i].copy_(torch.linalg.vector_norm(local_tensor(p.grad)))
        return hook

    @property
    def watching(self) -> bool:
        """Whether the norms are written by gradient hooks (`watch`) rather than `read`."""
        return bool(self._handles)

    def _slot(self) -> torch.Tensor:
        if self._norms is None:
            self._norms = torch.zeros(len(self.params), device=self.device)
        return self._norms

    def take(self) -> list[torch.Tensor] | None:
        """This step's norms (None: no backward seen); the next step starts afresh."""
        norms, self._norms = self._norms, None
        return None if norms is None else list(norms.unbind())

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class BlockOutputs:
    """The residual stream after each block on an armed forward (the last one of a step)."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.armed = False
        self._out: list[torch.Tensor | None] = [None] * len(blocks)
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if self.armed:
                t = tensor_of(output)
                self._out[i] = None if t is None else t.detach()
        return hook

    def take(self) -> list[torch.Tensor] | None:
        """The outputs of the armed forward (None unless every block produced one)."""
        out, self._out = self._out, [None] * len(self._out)
        return None if any(t is None for t in out) else [t for t in out if t is not None]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class InputIds:
    """The token ids of the last training forward of `model` (`input_ids=` or the first
    positional argument), for the attention probe's recompute on a few of its rows."""

    def __init__(self, model: nn.Module) -> None:
        self._ids: torch.Tensor | None = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and isinstance(ids, torch.Tensor) and not ids.is_floating_point():
            self._ids = ids

    def take(self) -> torch.Tensor | None:
        ids, self._ids = self._ids, None
        return ids

    def close(self) -> None:
        self._handle.remove()


def loss_of(output: Any) -> torch.Tensor | None:
    """The `loss` of a model output (a Hugging Face `ModelOutput` or a dict), if it has one."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class StepLoss:
    """The mean loss of a step's micro-batches, summed on device: the losses the loop hands
    over (`add`), else those of the model's training outputs (`watch`)."""

    def __init__(self) -> None:
        self._given: list[torch.Tensor] = []
        self._seen: list[torch.Tensor] = []
        self._handle: Any = None

    def add(self, loss: torch.Tensor) -> None:
        self._given.append(loss.detach().float().reshape(()))

    def watch(self, model: nn.Module) -> None:
        """Keep the loss of every training forward of `model` (outputs with a `loss`)."""
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            loss = loss_of(output)
            if module.training and loss is not None:
                self._seen.append(loss.detach().float().reshape(()))
        self._handle = model.register_forward_hook(hook)

    def take(self, device: torch.device) -> torch.Tensor:
        """This step's mean loss (NaN when none was seen)."""
        losses = self._given or self._seen
        self._given, self._seen = [], []
        if not losses:
            return torch.full((), float("nan"), device=device)
        return torch.stack(losses).mean()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
