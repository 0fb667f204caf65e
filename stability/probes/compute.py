"""The compute function of every device metric, bound to its declaration in
`stability.metric_names` by key (and shape, where a key has two).

A compute takes one step's `ProbeInputs` and returns a device tensor of the declared shape
(scalar: 0-d, per layer: [n_layers], per head: [probed layers, n_heads]). Statistics shared by
several metrics (grad norms of the parameter groups, the optimizer-state sums, the attention
recompute) are computed once per step, on first use, so a metric is one line here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from stability import metric_names as M
from stability.distributed import DataParallel
from stability.loss import LossParts
from stability.probes.layer_map import PARTS, LayerMap
from stability.probes.layout import ParamLayout
from stability.probes.registry import Metric, Registry, Shape
from stability.probes.stats import (
    act_rms,
    attention_stats,
    grad_stats,
    mean_square_rms,
    param_update_stats,
)


@dataclass(frozen=True)
class ProbeSetup:
    """What stays fixed over a run: the parameter layout, the layer map, the probed layers."""

    layout: ParamLayout
    layer_map: LayerMap
    layers: list[int]
    attn_batch: int  # rows of the batch the attention probe recomputes
    dp: DataParallel | None = None  # sharded parameters, local activations (all-reduced here)


@dataclass
class ProbeInputs:
    """One step as the probes see it. The step row has the loss parts and clipping results; the
    probe and attention rows, after the optimizer step, also the optimizer, the residual stream,
    the sublayer outputs and the batch (`after_step`), and what had to be read before the step
    changed the optimizer state (`v_ratio`)."""

    setup: ProbeSetup
    parts: LossParts
    grad_norm: torch.Tensor
    clip_coef: torch.Tensor
    skipped: torch.Tensor
    tensor_norms: list[torch.Tensor]  # pre-clip gradient norms of `setup.layout.params`, in order
    optimizer: torch.optim.Optimizer | None = None
    hidden: list[torch.Tensor] | None = None
    model: nn.Module | None = None
    input_ids: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None
    v_ratio: torch.Tensor | None = None  # [L], before the optimizer step (`grad_v_ratio_max`)
    sublayers: dict[str, list[torch.Tensor]] | None = None  # mean squares per kind and layer

    def after_step(self, parts: LossParts, optimizer: torch.optim.Optimizer,
                   hidden: list[torch.Tensor] | None, model: nn.Module, input_ids: torch.Tensor,
                   doc_ids: torch.Tensor | None,
                   sublayers: dict[str, list[torch.Tensor]] | None = None) -> ProbeInputs:
        """The same step after the optimizer step (the statistics already computed are kept)."""
        self.parts, self.optimizer, self.hidden = parts, optimizer, hidden
        self.model, self.input_ids, self.doc_ids = model, input_ids, doc_ids
        self.sublayers = sublayers
        return self

    @cached_property
    def grads(self) -> dict[str, torch.Tensor]:
        return grad_stats(self.setup.layout, self.tensor_norms)

    @cached_property
    def params(self) -> dict[str, torch.Tensor]:
        if self.optimizer is None:
            raise ValueError("parameter and update statistics need the optimizer: probe cadence")
        dp = self.setup.dp
        return param_update_stats(self.setup.layout, self.optimizer, dp.sum_ if dp else None)

    @cached_property
    def act_rms(self) -> torch.Tensor:
        if self.hidden is None:
            raise ValueError("activation statistics need the residual stream: probe cadence")
        dp = self.setup.dp
        return act_rms(self.hidden, dp.mean_ if dp else None)

    def sublayer_rms(self, kind: str) -> torch.Tensor:
        """RMS of every block's `kind` ("attn" or "mlp") output on this step's forward, [L]."""
        if self.sublayers is None:
            raise ValueError("sublayer statistics need the armed forward's outputs: probe cadence")
        dp = self.setup.dp
        return mean_square_rms(self.sublayers[kind], dp.mean_ if dp else None)

    def grad_v_ratio(self) -> torch.Tensor:
        if self.v_ratio is None:
            raise ValueError("g^2 / v_hat is read before the optimizer step (ProbeSession."
                             "before_update)")
        return self.v_ratio

    @cached_property
    def attention(self) -> dict[str, torch.Tensor]:
        model, ids, dp = self.model, self.input_ids, self.setup.dp
        if model is None or ids is None:
            raise ValueError("attention statistics need the model and batch: attn cadence")
        rows = slice(0, self.setup.attn_batch)  # of the global batch: every rank, same rows
        with dp.unsharded(model) if dp else contextlib.nullcontext():
            return attention_stats(model, ids[rows], None if self.doc_ids is None else self.doc_ids[rows],
                                   self.setup.layers, self.setup.layer_map)

    def part_norm(self, part: str) -> torch.Tensor:
        """Per-layer gradient norm of one of a block's PARTS."""
        return self.grads["part_norm"][:, PARTS.index(part)]


Compute = Callable[[ProbeInputs], torch.Tensor]

# key, or (key, shape) where the key has two declarations -> compute
TABLE: dict[str | tuple[str, Shape], Compute] = {
    # every step
    M.TRAIN_LOSS: lambda x: x.parts.loss,
    M.TRAIN_CE_LOSS: lambda x: x.parts.ce,
    M.TRAIN_Z_LOSS: lambda x: x.parts.z_loss,
    M.TRAIN_Z_LOSS_RAW: lambda x: x.parts.z_loss_raw,
    (M.GRAD_NORM, Shape.SCALAR): lambda x: x.grad_norm,
    M.GRAD_CLIP_COEF: lambda x: x.clip_coef,
    M.OPTIM_STEP_SKIPPED: lambda x: x.skipped,
    M.LOGITS_LOG_Z_MEAN: lambda x: x.parts.log_z.detach().mean(),
    M.LOGITS_LOG_Z_MAX: lambda x: x.parts.log_z.detach().amax(),
    M.GRAD_NORM_EMBED: lambda x: x.grads["embed_norm"],
    M.GRAD_NORM_LM_HEAD: lambda x: x.grads["head_norm"],
    (M.GRAD_NORM, Shape.PER_LAYER): lambda x: x.grads["layer_norm"],
    # every probes.every
    M.GRAD_RMS: lambda x: x.grads["layer_rms"],
    M.GRAD_NORM_ATTN: lambda x: x.part_norm("attn"),
    M.GRAD_NORM_MLP: lambda x: x.part_norm("mlp"),
    M.GRAD_NORM_NORMS: lambda x: x.part_norm("norm"),
    M.PARAM_NORM: lambda x: x.params["param_norm"],
    M.UPDATE_RMS: lambda x: x.params["update_rms"],
    M.OPTIM_EPS_REGIME: lambda x: x.params["eps_regime"],
    M.ACT_RMS: lambda x: x.act_rms,
    M.UPDATE_GRAD_COS: lambda x: x.params["update_grad_cos"],
    M.GRAD_V_RATIO_MAX: lambda x: x.grad_v_ratio(),
    M.ACT_ATTN_OUT_RMS: lambda x: x.sublayer_rms("attn"),
    M.ACT_MLP_OUT_RMS: lambda x: x.sublayer_rms("mlp"),
    M.GRAD_RMS_EMBED: lambda x: x.grads["embed_rms"],
    M.GRAD_RMS_LM_HEAD: lambda x: x.grads["head_rms"],
    M.PARAM_NORM_EMBED: lambda x: x.params["embed_param_norm"],
    M.LOGITS_MAX_ABS: lambda x: x.parts.logit_max_abs,
    M.LOGITS_MEAN: lambda x: x.parts.logit_mean,
    # every probes.attn_every
    M.ATTN_LOGIT_MAX: lambda x: x.attention["logit_max"],
    M.ATTN_ENTROPY_MEAN: lambda x: x.attention["entropy_mean"],
    M.ATTN_ENTROPY_MIN: lambda x: x.attention["entropy_min"],
    M.ATTN_Q_NORM: lambda x: x.attention["q_norm"],
    M.ATTN_K_NORM: lambda x: x.attention["k_norm"],
}


def bind(table: Mapping[str | tuple[str, Shape], Compute], registry: Registry = M.REGISTRY
         ) -> dict[Metric, Compute]:
    """Declaration -> compute for every entry of `table` (each must name one declared device
    metric)."""
    out: dict[Metric, Compute] = {}
    for name, fn in table.items():
        key, shape = name if isinstance(name, tuple) else (name, None)
        metric = registry.get(key, shape)
        if not metric.cadence.on_device:
            raise ValueError(f"{key}: declared at cadence {metric.cadence}, not a device row")
        out[metric] = fn
    return out


COMPUTE: dict[Metric, Compute] = bind(TABLE)


def require(computes: Mapping[Metric, Compute], metrics: Iterable[Metric]) -> None:
    """Raise unless every one of `metrics` has a compute."""
    missing = [f"{m.key} ({m.shape}, {m.cadence})" for m in metrics if m not in computes]
    if missing:
        raise ValueError(f"no compute for {', '.join(missing)}: add one to "
                         "stability.probes.compute.TABLE")
