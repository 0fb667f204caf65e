"""The trainer's GPU-path model options: `train.compile` and `train.activation_checkpointing`.

Both act per block and keep the model's modules, parameter names and state-dict keys as they are
(`nn.Module.compile` compiles in place), so checkpoints, probes and FSDP see the same model.
Probes run the blocks eagerly (`eager`): their hooks and `no_grad` passes need no extra graphs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def apply_train_options(model: nn.Module, compile: bool, activation_checkpointing: bool) -> None:
    """Turn on activation checkpointing and/or `torch.compile` for each of `model.blocks`.

    Call after FSDP sharding: compiling a sharded block keeps FSDP's hooks outside the graphs
    (dynamo skips them), and checkpointing sits inside the block's forward, under those hooks.
    """
    for block in model.blocks:
        if activation_checkpointing:
            block.checkpointing = True
        if compile:
            block.compile()


def eager(enabled: bool = True):
    """A context where compiled modules run eagerly (probe passes); a no-op unless `enabled`."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")
