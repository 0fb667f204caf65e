"""The one owner of metric names (DESIGN.md section 3): slash-separated, lower case, layer last.

Trainer, tracking, dashboards and reports refer to these constants, never to string literals.
"""

from __future__ import annotations

# Training step (read out every `train.log_every` steps).
TRAIN_LOSS = "train/loss"  # CE + scaled z-loss, as optimised
TRAIN_CE_LOSS = "train/ce_loss"
TRAIN_Z_LOSS = "train/z_loss"  # scaled, as added to the loss
TRAIN_Z_LOSS_RAW = "train/z_loss_raw"  # mean log^2 Z before the coefficient
TRAIN_LR = "train/lr"
TRAIN_TOKENS = "train/tokens"
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
TRAIN_MASKED_TOKENS = "train/masked_tokens"  # labels removed by the repeated n-gram filter

EVAL_LOSS = "eval/loss"  # held-out cross-entropy

GRAD_NORM = "grad/norm"  # global L2 norm before clipping
GRAD_CLIP_COEF = "grad/clip_coef"
OPTIM_STEP_SKIPPED = "optim/step_skipped"


def layer_key(prefix: str, layer: int) -> str:
    """`prefix/layer_{i}`, e.g. `layer_key(GRAD_NORM, 3) == "grad/norm/layer_3"`."""
    return f"{prefix}/layer_{layer}"


# Per-step scalars the trainer keeps on device and reads out in one copy: order matters.
STEP_SERIES: tuple[str, ...] = (
    TRAIN_LOSS,
    TRAIN_CE_LOSS,
    TRAIN_Z_LOSS,
    TRAIN_Z_LOSS_RAW,
    GRAD_NORM,
    GRAD_CLIP_COEF,
    OPTIM_STEP_SKIPPED,
)
