"""Learning-rate schedules: linear warmup, then cosine / linear decay to `alpha_f` of peak, or constant."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, total: int, warmup: int, kind: str, alpha_f: float) -> float:
    """Learning rate at 0-based `step`: linear warmup to `peak` over `warmup` steps, then
    `cosine` or `linear` decay to `alpha_f * peak` at `total`, or `constant`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return peak * (alpha_f + (1 - alpha_f) * 0.5 * (1 + math.cos(math.pi * progress)))
    return peak * (1 - (1 - alpha_f) * progress)
