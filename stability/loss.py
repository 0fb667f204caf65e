"""The training loss: cross-entropy plus the z-loss, in fp32, averaged over non-ignored tokens.

`lm_loss(logits, ...)`: one autograd function computes both terms from a single log-sum-exp and
writes the logits' gradient in one pass, `softmax * (g_ce + 2 g_z log Z) - g_ce * onehot` on kept
positions over their count: no [B, T, V] log-probabilities or zero-filled gradients.

`fused_lm_loss(hidden, head_weight, ...)`: the trainer's path. The LM head and the loss run chunk
by chunk of rows, and each chunk's gradient is formed while its logits are still in cache; the
full [B*T, V] logits never exist (for a 100k vocabulary that is most of a step's memory).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100


class LossParts(NamedTuple):
    """`loss = ce + z_loss`; `z_loss = coef * z_loss_raw`; `log_z` is logsumexp per position."""

    loss: torch.Tensor
    ce: torch.Tensor
    z_loss: torch.Tensor
    z_loss_raw: torch.Tensor
    log_z: torch.Tensor
    logit_max_abs: torch.Tensor | None = None  # with `stats=True` (probe steps)
    logit_mean: torch.Tensor | None = None


class _CrossEntropyZ(torch.autograd.Function):
    """(mean CE, mean log^2 Z, log Z) over kept rows of `logits` [N, V] (fp32)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor):  # type: ignore[override]
        keep = labels != IGNORE_INDEX
        count = keep.sum().clamp(min=1).to(logits.dtype)
        log_z = torch.logsumexp(logits, dim=-1)
        target = logits.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
        ce = torch.where(keep, log_z - target, 0.0).sum() / count
        z_raw = torch.where(keep, log_z.square(), 0.0).sum() / count
        ctx.save_for_backward(logits, labels, log_z, keep, count)
        ctx.mark_non_differentiable(log_z)
        return ce, z_raw, log_z

    @staticmethod
    def backward(ctx, g_ce: torch.Tensor, g_z: torch.Tensor, _g_log_z):  # type: ignore[override]
        logits, labels, log_z, keep, count = ctx.saved_tensors
        # Per-row weights of softmax: (g_ce + 2 g_z log Z) / count on kept rows, 0 elsewhere.
        row = torch.where(keep, (g_ce + 2.0 * g_z * log_z) / count, 0.0)
        grad = logits.sub(log_z.unsqueeze(1)).exp_().mul_(row.unsqueeze(1))
        onehot = torch.where(keep, g_ce / count, 0.0)
        grad.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), -onehot.unsqueeze(1))
        return grad, None


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, z_coef: float) -> LossParts:
    """CE + `z_coef * mean(logsumexp(logits)^2)` over positions whose label is not -100.

    Computed in fp32 whatever the logits' dtype. With every label ignored the loss is 0, not NaN.
    """
    flat = logits.float().reshape(-1, logits.shape[-1])
    ce, z_raw, log_z = _CrossEntropyZ.apply(flat, labels.reshape(-1))
    z = z_raw * z_coef
    return LossParts(ce + z, ce, z, z_raw, log_z.view(labels.shape))


def _chunk_rows(vocab: int) -> int:
    """Rows per chunk: up to 512 MiB of fp32 logits (at least 128 rows), on every device.

    Fewer, larger chunks are faster on CPU too (measured at vocab 2k-100k, d_model 128-768):
    each extra chunk re-reads and re-writes the [V, d] weight gradient in a thin matmul.
    """
    return max(128, (1 << 27) // vocab)


class _LinearCrossEntropyZ(torch.autograd.Function):
    """loss = mean CE + z_coef * mean log^2 Z of `hidden @ weight.T`, gradients formed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, z_coef: float, chunk: int,  # type: ignore[override]
                stats: bool):
        device = hidden.device
        # Matmuls in the autocast dtype when autocast is on (bf16 on GPU), softmax maths in fp32.
        dtype = (torch.get_autocast_dtype(device.type)
                 if torch.is_autocast_enabled(device.type) else weight.dtype)
        with torch.autocast(device.type, enabled=False):
            w = weight.to(dtype)
            keep = labels != IGNORE_INDEX
            count = keep.sum().clamp(min=1).float()
            inv = 1.0 / count
            n = hidden.shape[0]
            log_z = torch.empty(n, dtype=torch.float32, device=device)
            ce_sum = torch.zeros((), dtype=torch.float32, device=device)
            z_sum = torch.zeros_like(ce_sum)
            grad_hidden = torch.empty_like(hidden)
            want_weight = ctx.needs_input_grad[1]  # probes differentiate w.r.t. hidden only
            grad_weight = None
            max_abs, total = torch.zeros_like(ce_sum), torch.zeros_like(ce_sum)
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                h, lab, k = hidden[rows].to(dtype), labels[rows].clamp(min=0).unsqueeze(1), keep[rows]
                logits = (h @ w.t()).float()
                if stats:
                    lo, hi = logits.aminmax()
                    max_abs = torch.maximum(max_abs, torch.maximum(-lo, hi))
                    total += logits.sum()
                target = logits.gather(1, lab).squeeze(1)
                # log Z and the softmax in place: exp(logits - row max), then one row sum.
                peak = logits.amax(dim=1)
                expd = logits.sub_(peak.unsqueeze(1)).exp_()
                sum_exp = expd.sum(dim=1)
                lse = peak + sum_exp.log()
                log_z[rows] = lse
                ce_sum += torch.where(k, lse - target, 0.0).sum()
                z_sum += torch.where(k, lse.square(), 0.0).sum()
                # d loss/d logits = softmax (1 + 2 z_coef lse) / count - onehot / count, kept rows
                row = torch.where(k, (1.0 + 2.0 * z_coef * lse) * inv / sum_exp, 0.0)
                grad = expd.mul_(row.unsqueeze(1))
                grad.scatter_add_(1, lab, torch.where(k, -inv, 0.0).unsqueeze(1))
                grad = grad.to(dtype)
                grad_hidden[rows] = grad @ w
                if not want_weight:
                    continue
                if grad_weight is None:  # the first chunk's product is the buffer: no zero fill
                    grad_weight = (grad.t() @ h).float()
                elif dtype == torch.float32:
                    grad_weight.addmm_(grad.t(), h)
                else:
                    grad_weight += (grad.t() @ h).float()
        # Not saved tensors: backward hands these buffers on (see there).
        ctx.grads = [grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype)]
        ce, z_raw = ce_sum * inv, z_sum * inv
        mean = total / float(n * weight.shape[0])
        ctx.mark_non_differentiable(ce, z_raw, log_z, max_abs, mean)
        return ce + z_coef * z_raw, ce, z_raw, log_z, max_abs, mean

    @staticmethod
    def backward(ctx, g_loss, *_):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError("fused_lm_loss: backward ran twice through one forward "
                               "(retain_graph is not supported)")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        # On CPU, reading g_loss costs nothing: when it is 1 (a plain loss.backward()) the
        # buffers go on as they are, and autograd can keep the weight's as its .grad (no copy).
        if not (g_loss.device.type == "cpu" and g_loss.numel() == 1 and float(g_loss) == 1.0):
            grad_hidden = grad_hidden * g_loss
            grad_weight = None if grad_weight is None else grad_weight * g_loss
        return grad_hidden, grad_weight, None, None, None, None


def fused_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                  z_coef: float, chunk_rows: int | None = None, stats: bool = False) -> LossParts:
    """`lm_loss(hidden @ head_weight.T, labels, z_coef)` without materialising the logits.

    `hidden` [..., d] is the final-normed residual stream, `head_weight` [V, d] the LM head. Only
    `loss` carries gradients (ce and z_loss_raw are for logging). With `stats`, also the max
    |logit| and the mean logit over all positions (two more passes over each chunk).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_rows or _chunk_rows(head_weight.shape[0])
    loss, ce, z_raw, log_z, max_abs, mean = _LinearCrossEntropyZ.apply(
        flat, head_weight, labels.reshape(-1), float(z_coef), chunk, stats)
    return LossParts(loss, ce, z_raw * z_coef, z_raw, log_z.view(labels.shape),
                     max_abs if stats else None, mean if stats else None)
