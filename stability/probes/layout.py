"""Which parameter belongs to which layer and part: index tensors for on-device group sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PARTS = ("attn", "mlp", "norm")  # a block's parameters, split three ways


@dataclass
class ParamLayout:
    """Parameters in a fixed order and, per parameter, its group indices.

    Groups: `layer` in 0..L-1 for block parameters, L for the embedding, L + 1 for the LM head,
    L + 2 for the final norm; `part` = layer * 3 + PARTS.index(kind) for block parameters, else
    -1. Sums over groups are one `index_add_` of stacked per-tensor squares: no Python loops of
    `.item()`, no host sync.
    """

    names: list[str]
    params: list[nn.Parameter]
    layer_index: torch.Tensor  # long [P]
    part_index: torch.Tensor  # long [P], -1 outside blocks
    layer_numel: torch.Tensor  # float [L + 3]
    part_numel: torch.Tensor  # float [3 L]
    n_layers: int

    @property
    def embed_group(self) -> int:
        return self.n_layers

    @property
    def head_group(self) -> int:
        return self.n_layers + 1

    def layer_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-parameter `values` [P] into the L + 3 layer groups."""
        out = torch.zeros(self.n_layers + 3, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.layer_index.to(values.device), values)

    def part_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-parameter `values` [P] into the 3 L (layer, part) groups, [L, 3]."""
        keep = self.part_index >= 0
        out = torch.zeros(3 * self.n_layers, dtype=values.dtype, device=values.device)
        idx = self.part_index[keep].to(values.device)
        out.index_add_(0, idx, values[keep.to(values.device)])
        return out.view(self.n_layers, 3)


def _part_of(rest: str) -> str:
    if rest.startswith("attn.") and "norm" not in rest:
        return "attn"
    if rest.startswith("mlp."):
        return "mlp"
    return "norm"  # attn_norm, mlp_norm, q_norm / k_norm (QK-norm scales count as norms)


def param_layout(model: nn.Module) -> ParamLayout:
    """The layout of a `Transformer` (named `embed`, `blocks.{i}`, `final_norm`, `lm_head`)."""
    n_layers = len(model.get_submodule("blocks"))
    names, params, layers, parts = [], [], [], []
    for name, p in model.named_parameters():  # tied weights appear once (as embed.weight)
        if not p.requires_grad:
            continue
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            layer = int(i)
            part = layer * 3 + PARTS.index(_part_of(rest))
        else:
            top = name.split(".", 1)[0]
            layer = {"embed": n_layers, "lm_head": n_layers + 1}.get(top, n_layers + 2)
            part = -1
        names.append(name)
        params.append(p)
        layers.append(layer)
        parts.append(part)
    layer_index = torch.tensor(layers, dtype=torch.long)
    part_index = torch.tensor(parts, dtype=torch.long)
    numel = torch.tensor([float(p.numel()) for p in params])
    layer_numel = torch.zeros(n_layers + 3).index_add_(0, layer_index, numel)
    keep = part_index >= 0
    part_numel = torch.zeros(3 * n_layers).index_add_(0, part_index[keep], numel[keep])
    return ParamLayout(names, params, layer_index, part_index, layer_numel, part_numel, n_layers)
