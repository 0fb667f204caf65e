"""On-device probe statistics: each function returns tensors and never syncs with the host.

Bound to the declared metrics in `stability.probes.compute`; named when read out
(`stability.probes.recorder`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model.attention_backends import attention_logits
from stability.distributed import local_tensor
from stability.probes.layer_map import LayerMap, layer_map_for
from stability.probes.layout import ParamLayout


def grad_stats(layout: ParamLayout, tensor_norms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-layer, per-part, embedding and LM-head gradient L2 norms and RMS from per-tensor norms.

    `tensor_norms` are the pre-clip norms of `layout.params`' gradients, in order (the clipping
    step computes them anyway). Returns `layer_norm` [L], `layer_rms` [L], `part_norm` [L, 3]
    (attn, mlp, norm), `embed_norm`, `head_norm`, `embed_rms`, `head_rms` (0-d).
    """
    sq = torch.stack([n.float() for n in tensor_norms]).square()
    layer_sq = layout.layer_sums(sq)
    numel = layout.layer_numel.to(sq.device)
    rms = (layer_sq / numel.clamp(min=1)).sqrt()
    norm = layer_sq.sqrt()
    L = layout.n_layers
    return {
        "layer_norm": norm[:L], "layer_rms": rms[:L], "part_norm": layout.part_sums(sq).sqrt(),
        "embed_norm": norm[L], "head_norm": norm[L + 1], "embed_rms": rms[L], "head_rms": rms[L + 1],
    }


@torch.no_grad()
def param_update_stats(layout: ParamLayout, optimizer: torch.optim.Optimizer,
                       reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                       ) -> dict[str, torch.Tensor]:
    """Per-layer parameter norms, RMS of the unscaled Adam update, the eps-regime share and the
    update's cosine with the gradient.

    The unscaled update is `m_hat / (sqrt(v_hat) + eps)` (bias-corrected moments, as the step
    applies them before the learning rate); the eps regime is the share of entries with
    `sqrt(v_hat) < eps`, where eps dominates the denominator (Wortsman et al. 2023); the cosine
    is between that update and the gradient still held by the parameters (the descent direction
    the step was given; clipping scales it, which a cosine ignores). Read from the optimizer
    state after the step, before the gradients are zeroed. Returns `param_norm` [L],
    `embed_param_norm` (0-d), `update_rms` [L], `eps_regime` [L], `update_grad_cos` [L] (0 where
    a layer has no gradient).
    Sharded parameters: the sums run over the local shards and `reduce` sums the stacked
    [5, P] sums over ranks (one all-reduce).
    """
    hyper = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    device = layout.params[0].device
    p_sq = torch.stack([local_tensor(p.detach()).float().square().sum() for p in layout.params])
    u_sq, small, ug, g_sq = (torch.zeros(len(layout.params), device=device) for _ in range(4))
    for i, p in enumerate(layout.params):
        state = optimizer.state.get(p)
        if not state:
            continue
        group = hyper[id(p)]
        b1, b2 = group["betas"]
        t = state["step"].float().clamp(min=1)
        denom = (local_tensor(state["exp_avg_sq"]).float() / (1 - b2**t)).sqrt()
        update = local_tensor(state["exp_avg"]).float() / (1 - b1**t) / (denom + group["eps"])
        u_sq[i] = update.square().sum()
        small[i] = (denom < group["eps"]).sum()
        if p.grad is not None:
            grad = local_tensor(p.grad).float()
            ug[i] = (update * grad).sum()
            g_sq[i] = grad.square().sum()
    if reduce is not None:
        p_sq, u_sq, small, ug, g_sq = reduce(torch.stack([p_sq, u_sq, small, ug, g_sq])).unbind()
    L = layout.n_layers
    numel = layout.layer_numel.to(device).clamp(min=1)
    layer_u_sq = layout.layer_sums(u_sq)
    scale = (layer_u_sq * layout.layer_sums(g_sq)).sqrt()
    cos = torch.where(scale > 0, layout.layer_sums(ug) / scale.clamp(min=1e-30), 0.0)
    return {
        "param_norm": layout.layer_sums(p_sq).sqrt()[:L],
        "embed_param_norm": layout.layer_sums(p_sq).sqrt()[L],
        "update_rms": (layer_u_sq / numel).sqrt()[:L],
        "eps_regime": (layout.layer_sums(small) / numel)[:L],
        "update_grad_cos": cos[:L],
    }


@torch.no_grad()
def grad_v_ratio_max(layout: ParamLayout, optimizer: torch.optim.Optimizer, clip_coef: torch.Tensor,
                     reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """Per layer, the largest `g^2 / v_hat` over the block's entries, [L] (SPAM, Huang et al.
    2025: gradient spikes up to 1000x the running second moment).

    Call after clipping and before the optimizer step: `g` is the pre-clip gradient (the held,
    clipped gradient divided by `clip_coef`), `v_hat` Adam's bias-corrected second moment as it
    stood before this step, so a spike shows against what the optimizer expected rather than
    against a moment it already joined (with it, the ratio is bounded by 1 / (1 - beta2)).
    Parameters without optimizer state yet (the first step) or a gradient count 0; `v_hat` is
    floored at eps^2 so a never-seen entry does not divide by zero. Sharded parameters:
    `reduce_max` takes the max over ranks (one all-reduce).
    """
    hyper = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    device = layout.params[0].device
    ratio = torch.zeros(len(layout.params), device=device)
    inv_coef = 1.0 / clip_coef.float().clamp(min=1e-30)
    for i, p in enumerate(layout.params):
        state = optimizer.state.get(p)
        if not state or p.grad is None or layout.layer_index[i] >= layout.n_layers:
            continue
        group = hyper[id(p)]
        t = state["step"].float()
        v_hat = local_tensor(state["exp_avg_sq"]).float() / (1 - group["betas"][1] ** t).clamp(min=1e-30)
        g_sq = (local_tensor(p.grad).float() * inv_coef).square()
        ratio[i] = torch.where(t > 0, (g_sq / v_hat.clamp(min=group["eps"] ** 2)).amax(), 0.0)
    if reduce_max is not None:
        ratio = reduce_max(ratio)
    out = torch.zeros(layout.n_layers + 3, device=device)
    return out.scatter_reduce_(0, layout.layer_index.to(device), ratio, "amax")[:layout.n_layers]


def act_rms(hidden: list[torch.Tensor],
            mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """RMS of the residual stream after each block, [L]. Data parallel: `mean` averages the
    stacked local mean squares over ranks (equal row counts; one all-reduce)."""
    if mean is None:
        return torch.stack([h.detach().float().square().mean().sqrt() for h in hidden])
    return mean(torch.stack([h.detach().float().square().mean() for h in hidden])).sqrt()


def mean_square_rms(mean_squares: list[torch.Tensor],
                    mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """RMS from per-layer mean squares (e.g. of the sublayer outputs), [L]; data parallel: `mean`
    averages the stacked local mean squares over ranks (one all-reduce)."""
    sq = torch.stack(mean_squares)
    return (sq if mean is None else mean(sq)).sqrt()


@torch.no_grad()
def attention_stats(model: nn.Module, input_ids: torch.Tensor, doc_ids: torch.Tensor | None,
                    layers: list[int] | None = None, layer_map: LayerMap | None = None
                    ) -> dict[str, torch.Tensor]:
    """Per layer and head: max attention logit `<q,k>/sqrt(d_head)`, mean and min entropy of the
    attention rows, mean q and k norms — recomputed from each layer's actual q and k (after
    clip_qkv, QK-norm and RoPE) for `input_ids`, since fused kernels never expose the logits.
    The blocks, their attention modules and q, k come from `layer_map` (by default the known map
    that describes `model`).

    Returns tensors of shape [L, H] (L = len(layers), all layers by default): `logit_max`,
    `entropy_mean`, `entropy_min`, `q_norm`, `k_norm`.
    """
    layer_map = layer_map or layer_map_for(model)
    if layer_map.trunk is None or layer_map.qk is None:
        raise ValueError(f"layer map {layer_map.name} has no q, k access: no attention probe")
    blocks = layer_map.blocks_of(model)
    inputs: list[torch.Tensor] = []
    hooks = [layer_map.attn_of(block).register_forward_pre_hook(
        lambda _m, args: inputs.append(args[0])) for block in blocks]
    try:
        layer_map.trunk(model, input_ids, doc_ids)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in
                                          ("logit_max", "entropy_mean", "entropy_min", "q_norm",
                                           "k_norm")}
    wanted = range(len(blocks)) if layers is None else layers
    for i in wanted:
        q, k = layer_map.qk(layer_map.attn_of(blocks[i]), inputs[i])  # [B, T, H, hd], [B, T, Hkv, hd]
        logits = attention_logits(q, k, doc_ids)  # [B, H, T, T] fp32, masked = -inf
        valid = torch.isfinite(logits)
        out["logit_max"].append(logits.amax(dim=(0, 2, 3)))
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp.masked_fill(~valid, 0.0)).sum(-1)  # [B, H, T]
        out["entropy_mean"].append(ent.mean(dim=(0, 2)))
        out["entropy_min"].append(ent.amin(dim=(0, 2)))
        out["q_norm"].append(q.float().norm(dim=-1).mean(dim=(0, 1)))
        kn = k.float().norm(dim=-1).mean(dim=(0, 1))
        out["k_norm"].append(kn.repeat_interleave(q.shape[2] // k.shape[2]))
    return {name: torch.stack(values) for name, values in out.items()}
