"""Probe rows: flatten named device tensors into one vector per step, and name them back on host.

The trainer appends one flat device vector per probe step; at a read-out all rows are stacked and
copied to the host in one transfer, and `ProbeSpec.named` turns each row back into metric keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stability import metric_names as M


@dataclass(frozen=True)
class Field:
    """One named tensor of a row: `key` (per-layer keys get `/layer_{i}` appended)."""

    key: str
    size: int
    per_layer: bool


class ProbeSpec:
    """The fixed layout of a row: an ordered list of fields."""

    def __init__(self, fields: list[Field]) -> None:
        self.fields = fields
        self.width = sum(f.size for f in fields)

    def flatten(self, *values: torch.Tensor) -> torch.Tensor:
        """One float32 vector from device tensors given in field order."""
        if len(values) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} tensors, got {len(values)}")
        return torch.cat([v.detach().float().reshape(-1) for v in values])

    def named(self, row: list[float]) -> dict[str, float]:
        """Metric key -> value for one host row."""
        out: dict[str, float] = {}
        pos = 0
        for f in self.fields:
            part = row[pos:pos + f.size]
            pos += f.size
            if f.per_layer:
                out.update({M.layer_key(f.key, i): v for i, v in enumerate(part)})
            else:
                out[f.key] = part[0]
        return out

    def slice(self, key: str) -> slice:
        """Where field `key` sits in a row."""
        pos = 0
        for f in self.fields:
            if f.key == key:
                return slice(pos, pos + f.size)
            pos += f.size
        raise KeyError(key)


def step_spec(n_layers: int) -> ProbeSpec:
    """Every step: the loss parts, global grad stats, log Z, per-layer grad norms (attribution)."""
    scalars = [Field(k, 1, False) for k in M.STEP_SERIES]
    return ProbeSpec(scalars + [
        Field(M.LOGITS_LOG_Z_MEAN, 1, False), Field(M.LOGITS_LOG_Z_MAX, 1, False),
        Field(M.GRAD_NORM_EMBED, 1, False), Field(M.GRAD_NORM_LM_HEAD, 1, False),
        Field(M.GRAD_NORM, n_layers, True),
    ])


def probe_spec(n_layers: int) -> ProbeSpec:
    """Every `probes.every` steps: per-layer grads, params, updates, activations, logits."""
    per_layer = [M.GRAD_RMS, M.GRAD_NORM_ATTN, M.GRAD_NORM_MLP, M.GRAD_NORM_NORMS, M.PARAM_NORM,
                 M.UPDATE_RMS, M.OPTIM_EPS_REGIME, M.ACT_RMS]
    return ProbeSpec([Field(k, n_layers, True) for k in per_layer] + [
        Field(k, 1, False) for k in (M.GRAD_RMS_EMBED, M.GRAD_RMS_LM_HEAD, M.PARAM_NORM_EMBED,
                                     M.LOGITS_MAX_ABS, M.LOGITS_MEAN)])


ATTN_KEYS = (M.ATTN_LOGIT_MAX, M.ATTN_ENTROPY_MEAN, M.ATTN_ENTROPY_MIN, M.ATTN_Q_NORM,
             M.ATTN_K_NORM)


def attn_spec(n_layers: int, n_heads: int) -> ProbeSpec:
    """Every `probes.attn_every` steps: attention statistics per layer and head ([L, H] each)."""
    return ProbeSpec([Field(k, n_layers * n_heads, False) for k in ATTN_KEYS])


def attn_layer_summary(row: list[float], spec: ProbeSpec, layers: list[int]) -> dict[str, float]:
    """Per-layer headline keys from a per-head attention row of the probed `layers`: max over
    heads of the max logit, mean over heads of entropies and norms, min of the minimum entropy."""
    out: dict[str, float] = {}
    for key in ATTN_KEYS:
        values = row[spec.slice(key)]
        heads = len(values) // len(layers)
        for pos, i in enumerate(layers):
            layer = values[pos * heads:(pos + 1) * heads]
            if key == M.ATTN_LOGIT_MAX:
                v = max(layer)
            elif key == M.ATTN_ENTROPY_MIN:
                v = min(layer)
            else:
                v = sum(layer) / len(layer)
            out[M.layer_key(key, i)] = v
    return out
