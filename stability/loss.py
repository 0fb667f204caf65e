"""The training loss: cross-entropy plus the z-loss, in fp32, averaged over non-ignored tokens."""

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


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, z_coef: float) -> LossParts:
    """CE + `z_coef * mean(logsumexp(logits)^2)` over positions whose label is not -100.

    One logsumexp serves both terms (CE = log Z - logit of the target). Computed in fp32 whatever
    the logits' dtype. With every label ignored the loss is 0, not NaN.
    """
    logits = logits.float()
    mask = labels != IGNORE_INDEX
    count = mask.sum().clamp(min=1).float()
    log_z = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ce = torch.where(mask, log_z - target, 0.0).sum() / count
    z_raw = torch.where(mask, log_z.square(), 0.0).sum() / count
    z = z_raw * z_coef
    return LossParts(ce + z, ce, z, z_raw, log_z)
