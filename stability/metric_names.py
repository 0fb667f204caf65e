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
TRAIN_MFU = "train/mfu"  # model FLOP utilisation, 0..1 (CUDA devices with a known peak only)
TRAIN_MASKED_TOKENS = "train/masked_tokens"  # labels removed by the repeated n-gram filter

EVAL_LOSS = "eval/loss"  # held-out cross-entropy

GRAD_NORM = "grad/norm"  # global L2 norm before clipping
GRAD_CLIP_COEF = "grad/clip_coef"
OPTIM_STEP_SKIPPED = "optim/step_skipped"

# Per-layer and per-part series: `layer_key(GRAD_NORM, i)` -> "grad/norm/layer_3".
GRAD_RMS = "grad/rms"
GRAD_NORM_EMBED = "grad/norm/embed"
GRAD_NORM_LM_HEAD = "grad/norm/lm_head"
GRAD_RMS_EMBED = "grad/rms/embed"
GRAD_RMS_LM_HEAD = "grad/rms/lm_head"
GRAD_NORM_ATTN = "grad/norm/attn"  # per layer: a block's attention projections
GRAD_NORM_MLP = "grad/norm/mlp"  # per layer: a block's MLP
GRAD_NORM_NORMS = "grad/norm/norms"  # per layer: a block's norm scales (QK-norm included)
PARAM_NORM = "param/norm"  # per layer
PARAM_NORM_EMBED = "param/norm/embed"
UPDATE_RMS = "update/rms"  # per layer: RMS of the unscaled Adam update m_hat / (sqrt(v_hat) + eps)
OPTIM_EPS_REGIME = "optim/eps_regime"  # per layer: share of entries with sqrt(v_hat) < eps
ACT_RMS = "act/rms"  # per layer: residual stream after block i

ATTN_LOGIT_MAX = "attn/logit_max"  # per layer (per head in the dense artifact)
ATTN_ENTROPY_MEAN = "attn/entropy_mean"
ATTN_ENTROPY_MIN = "attn/entropy_min"
ATTN_Q_NORM = "attn/q_norm"
ATTN_K_NORM = "attn/k_norm"

LOGITS_MAX_ABS = "logits/max_abs"
LOGITS_MEAN = "logits/mean"
LOGITS_LOG_Z_MEAN = "logits/log_z_mean"
LOGITS_LOG_Z_MAX = "logits/log_z_max"

SPIKE_SCORE_LOSS = "spike/score_loss"  # OLMo 2 definition on the CE loss, percent
SPIKE_SCORE_GRAD_NORM = "spike/score_grad_norm"
# OLMo-core's StabilityMonitorCallback (CE loss OR grad norm > mean + 6 std of a full window of
# 128): the running score of the last 10000 steps once there are that many, else the total.
SPIKE_OLMO_CORE = "spike/olmo_core"
# ...and the callback's own two metrics under its names (MLflow allows no parentheses, so
# OLMo-core's "spike/SpikeScore (total)" is "spike/SpikeScore_total" here).
SPIKE_OLMO_CORE_RUNNING = "spike/SpikeScore"
SPIKE_OLMO_CORE_TOTAL = "spike/SpikeScore_total"
SPIKE_ONLINE_LOSS = "spike/online_loss"  # per-series variant: > 6 std of the previous 128, fraction
SPIKE_ONLINE_GRAD_NORM = "spike/online_grad_norm"  # over the last 10000 steps
SPIKE_COUNT = "spike/count"  # events so far, all series and rules
SPIKES_ARTIFACT = "spikes.csv"

INIT_GROWTH_ACT = "init/growth_act"  # growth exponent lambda at init, logged once
INIT_GROWTH_GRAD = "init/growth_grad"


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
