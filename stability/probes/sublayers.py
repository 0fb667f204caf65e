"""The output of each block's attention and MLP before it joins the residual stream, seen
through forward hooks on the modules a `LayerMap` names.

Placement and QK-norm act exactly there (Takase et al., "Spike No More"; Rybakov et al. 2024):
under OLMo 2's reordered norm a sublayer's raw output can grow while the norm after it hides the
growth from the residual stream. Only an armed forward (a probe step's) records, and it keeps a
0-d mean square per module on device, not the activation itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stability.probes.layer_map import LayerMap

SUBLAYERS = ("attn", "mlp")


def tensor_of(output: Any) -> torch.Tensor | None:
    """A module's output tensor: the tensor itself or the first item of a tuple (HF attention
    modules return `(attn_output, attn_weights)`)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class SublayerOutputs:
    """Mean squares of every block's attention and MLP outputs on the armed forward of a step.

    A forward recomputed in backward (activation checkpointing) records the same values again.
    """

    def __init__(self, model: nn.Module, layer_map: LayerMap) -> None:
        blocks = layer_map.blocks_of(model)
        self.armed = False
        self._sq: dict[str, list[torch.Tensor | None]] = {k: [None] * len(blocks) for k in SUBLAYERS}
        self._handles = []
        for i, block in enumerate(blocks):
            for kind, module in (("attn", layer_map.attn_of(block)), ("mlp", layer_map.mlp_of(block))):
                self._handles.append(module.register_forward_hook(self._hook(kind, i)))

    def _hook(self, kind: str, i: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if self.armed:
                t = tensor_of(output)
                if t is not None:
                    self._sq[kind][i] = t.detach().float().square().mean()
        return hook

    def take(self) -> dict[str, list[torch.Tensor]] | None:
        """The armed forward's mean squares per sublayer kind (None unless every module of
        every block recorded); disarms until the next `armed = True`."""
        sq = self._sq
        self.armed = False
        self._sq = {k: [None] * len(v) for k, v in sq.items()}
        if any(t is None for values in sq.values() for t in values):
            return None
        return {k: [t for t in values if t is not None] for k, values in sq.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
