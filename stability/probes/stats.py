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
    """Per-layer parameter norms, RMS of the unscaled Adam update and the eps-regime share.

    The unscaled update is `m_hat / (sqrt(v_hat) + eps)` (bias-corrected moments, as the step
    applies them before the learning rate); the eps regime is the share of entries with
    `sqrt(v_hat) < eps`, where eps dominates the denominator (Wortsman et al. 2023). Read from
    the optimizer state after the step. Returns `param_norm` [L], `embed_param_norm` (0-d),
    `update_rms` [L], `eps_regime` [L].
    Sharded parameters: the sums run over the local shards and `reduce` sums the stacked
    [3, P] sums over ranks (one all-reduce).
    """
    hyper = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    device = layout.params[0].device
    p_sq = torch.stack([local_tensor(p.detach()).float().square().sum() for p in layout.params])
    u_sq = torch.zeros(len(layout.params), device=device)
    small = torch.zeros(len(layout.params), device=device)
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
    if reduce is not None:
        p_sq, u_sq, small = reduce(torch.stack([p_sq, u_sq, small])).unbind()
    L = layout.n_layers
    numel = layout.layer_numel.to(device).clamp(min=1)
    return {
        "param_norm": layout.layer_sums(p_sq).sqrt()[:L],
        "embed_param_norm": layout.layer_sums(p_sq).sqrt()[L],
        "update_rms": (layout.layer_sums(u_sq) / numel).sqrt()[:L],
        "eps_regime": (layout.layer_sums(small) / numel)[:L],
    }


def act_rms(hidden: list[torch.Tensor],
            mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """RMS of the residual stream after each block, [L]. Data parallel: `mean` averages the
    stacked local mean squares over ranks (equal row counts; one all-reduce)."""
    if mean is None:
        return torch.stack([h.detach().float().square().mean().sqrt() for h in hidden])
    return mean(torch.stack([h.detach().float().square().mean() for h in hidden])).sqrt()


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
