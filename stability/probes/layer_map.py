"""Where a decoder keeps its blocks and their parts: the probes find layers only through a
`LayerMap`, so the same probes can run on a model that is not ours.

A map names module paths: the list of blocks, inside a block its attention and its MLP (every
other block parameter counts as a norm, and so does any attention parameter with "norm" in its
name: QK-norm scales), the embedding and the LM head (all other top-level parameters, e.g. the
final norm, form a group of their own). The attention probe also needs each block's q and k as
the model attends with them: `trunk` runs the model on a batch so that every attention module
sees its input, and `qk` turns an attention module's input into (q, k).

Extension point: a new model family is one more map in `KNOWN`; `layer_map_for` picks the first
that describes the model, and `ProbeSession(..., layer_map=...)` takes any map directly. For
Hugging Face decoders the paths are, e.g., Llama-style `model.layers` / `self_attn` / `mlp` /
`model.embed_tokens` / `lm_head` / `config.num_attention_heads`, and GPT-2 `transformer.h` /
`attn` / `mlp` / `transformer.wte` / `lm_head` / `config.n_head`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PARTS = ("attn", "mlp", "norm")  # a block's parameters, split three ways

Trunk = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], Any]
QK = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Location:
    """Where one parameter sits: `layer` is None outside the blocks, where `part` is `embed`,
    `head` or `other`; inside, `part` is one of PARTS."""

    layer: int | None
    part: str


@dataclass(frozen=True)
class LayerMap:
    """Module paths (dotted, from the model or, for `attn` / `mlp`, from a block) of a decoder."""

    name: str
    blocks: str
    attn: str
    mlp: str
    embed: tuple[str, ...]
    head: tuple[str, ...]
    n_heads: str  # attribute path of the query-head count
    trunk: Trunk | None = None  # without `trunk` and `qk` the model has no attention probe
    qk: QK | None = None  # q [B, T, H, hd], k [B, T, H_kv, hd], as attended (after RoPE)

    def blocks_of(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def attn_of(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.attn)

    def mlp_of(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.mlp)

    def heads_of(self, model: nn.Module) -> int:
        return int(operator.attrgetter(self.n_heads)(model))

    def describes(self, model: nn.Module) -> bool:
        """Whether every path of the map resolves on `model`."""
        try:
            blocks = self.blocks_of(model)
            if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
                return False
            for path in (*self.embed, *self.head):
                model.get_submodule(path)
            blocks[0].get_submodule(self.attn)
            blocks[0].get_submodule(self.mlp)
            self.heads_of(model)
        except (AttributeError, TypeError, ValueError):
            return False
        return True

    def locate(self, name: str) -> Location:
        """The layer and part of the parameter called `name` (as in `named_parameters`)."""
        prefix = self.blocks + "."
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            return Location(int(index), self._part_of(rest))
        for part, paths in (("embed", self.embed), ("head", self.head)):
            if any(name.startswith(p + ".") for p in paths):
                return Location(None, part)
        return Location(None, "other")

    def _part_of(self, rest: str) -> str:
        if rest.startswith(self.attn + ".") and "norm" not in rest:
            return "attn"
        if rest.startswith(self.mlp + "."):
            return "mlp"
        return "norm"  # pre/post norms, QK-norm scales


def _features(model: nn.Module, input_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> Any:
    return model.features(input_ids, doc_ids)


def _project_qk(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return attn.project_qk(x)  # after clip_qkv, QK-norm and RoPE


TRANSFORMER = LayerMap("model.Transformer", blocks="blocks", attn="attn", mlp="mlp",
                       embed=("embed",), head=("lm_head",), n_heads="cfg.n_heads",
                       trunk=_features, qk=_project_qk)

KNOWN: tuple[LayerMap, ...] = (TRANSFORMER,)


def layer_map_for(model: nn.Module, maps: tuple[LayerMap, ...] = KNOWN) -> LayerMap:
    """The first of `maps` that describes `model`."""
    for m in maps:
        if m.describes(model):
            return m
    raise ValueError(f"no layer map describes {type(model).__name__} (tried "
                     f"{', '.join(m.name for m in maps)}): pass a LayerMap for it")
