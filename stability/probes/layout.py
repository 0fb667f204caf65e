"""Which parameter belongs to which layer and part: index tensors for on-device group sums."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stability.probes.layer_map import PARTS, LayerMap, layer_map_for


@dataclass
class ParamLayout:
    """Parameters in a fixed order and, per parameter, its group indices.

    Groups: `layer` in 0..L-1 for block parameters, L for the embedding, L + 1 for the LM head,
    L + 2 for the rest (the final norm); `part` = layer * 3 + PARTS.index(kind) for block
    parameters, else -1. Sums over groups are one `index_add_` of stacked per-tensor squares: no
    Python loops of `.item()`, no host sync.
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


def param_layout(model: nn.Module, layer_map: LayerMap | None = None) -> ParamLayout:
    """The layout of `model` as `layer_map` (by default the known map that describes it) sees it.

    Parameters keep `named_parameters` order (tied weights appear once), which is also the order
    the gradient clipping sums them in.
    """
    layer_map = layer_map or layer_map_for(model)
    n_layers = len(layer_map.blocks_of(model))
    outside = {"embed": n_layers, "head": n_layers + 1, "other": n_layers + 2}
    names, params, layers, parts = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        where = layer_map.locate(name)
        if where.layer is None:
            layer, part = outside[where.part], -1
        else:
            layer, part = where.layer, where.layer * 3 + PARTS.index(where.part)
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
