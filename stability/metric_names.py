"""The one owner of metric names and their declarations (docs/metrics.md is generated from them):
slash-separated, lower case, layer last.

Every metric is declared here once, as its constant: key, cadence, shape, what it is and its
source. Trainer, tracking, dashboards and reports refer to these constants, never to string
literals; the device row layouts, the recorder's MLflow and dense names and `docs/metrics.md`
(`python -m stability.probes.docs`) are derived from `REGISTRY`. Within a cadence, declaration
order is row order. Torch-free: reports import it.
"""

from __future__ import annotations

from stability.probes.registry import Cadence, Registry, Shape

OLMO2 = "OLMo 2 report (arXiv 2501.00656) section 3"
WORTSMAN = "Wortsman et al. 2023, small-scale proxies (arXiv 2309.14322)"
OLMO_CORE = "OLMo-core `StabilityMonitorCallback`"
ZHAI = "Zhai et al. 2023, attention entropy collapse (arXiv 2303.06296)"
MOLYBOG = "Molybog et al. 2023, a theory on Adam instability (arXiv 2304.09871)"
SPAM = "Huang et al. 2025, SPAM: spike-aware Adam (arXiv 2501.06842)"
SUBLAYER = ("Rybakov et al. 2024 (arXiv 2410.16682); Takase et al. 2023, Spike No More "
            "(arXiv 2312.16903)")

REGISTRY = Registry()
_declare = REGISTRY.declare

# ---- every step: the step row (kept on device, read out every `train.log_every` steps)
TRAIN_LOSS = _declare("train/loss", Cadence.STEP, what="CE + scaled z-loss, as optimised")
TRAIN_CE_LOSS = _declare("train/ce_loss", Cadence.STEP, what="cross-entropy over the kept labels")
TRAIN_Z_LOSS = _declare("train/z_loss", Cadence.STEP, what="z-loss, scaled, as added to the loss",
                        source=OLMO2)
TRAIN_Z_LOSS_RAW = _declare("train/z_loss_raw", Cadence.STEP,
                            what="mean log^2 Z over the kept labels, before the coefficient",
                            source=OLMO2)
GRAD_NORM = _declare("grad/norm", Cadence.STEP,
                     what="global L2 norm of the gradient before clipping", source=OLMO2)
GRAD_CLIP_COEF = _declare("grad/clip_coef", Cadence.STEP,
                          what="factor the clipping scaled the gradient by (1: not clipped)")
OPTIM_STEP_SKIPPED = _declare("optim/step_skipped", Cadence.STEP,
                              what="1 where skip-step left the update out (`optim.skip_step`)",
                              source="OLMo-core `SkipStepAdamW`")
LOGITS_LOG_Z_MEAN = _declare("logits/log_z_mean", Cadence.STEP,
                             what="mean log Z (logsumexp of the output logits) over positions; "
                                  "drifts from 0 in output-logit divergence", source=WORTSMAN)
LOGITS_LOG_Z_MAX = _declare("logits/log_z_max", Cadence.STEP, what="max log Z over positions",
                            source=WORTSMAN)
GRAD_NORM_EMBED = _declare("grad/norm/embed", Cadence.STEP,
                           what="gradient L2 norm of the embedding (pre-clip)")
GRAD_NORM_LM_HEAD = _declare("grad/norm/lm_head", Cadence.STEP,
                             what="gradient L2 norm of the LM head (pre-clip; 0 when tied to the embedding)")
_declare(GRAD_NORM, Cadence.STEP, Shape.PER_LAYER,
         what="a block's gradient L2 norm (pre-clip): every step in the dense artifact and the "
              "spike attribution, in MLflow at probe steps")

# ---- every `probes.every` steps: the probe row
GRAD_RMS = _declare("grad/rms", Cadence.PROBE, Shape.PER_LAYER,
                    what="RMS of a block's gradient entries (pre-clip)", source=WORTSMAN)
GRAD_NORM_ATTN = _declare("grad/norm/attn", Cadence.PROBE, Shape.PER_LAYER,
                          what="gradient L2 norm of a block's attention projections")
GRAD_NORM_MLP = _declare("grad/norm/mlp", Cadence.PROBE, Shape.PER_LAYER,
                         what="gradient L2 norm of a block's MLP")
GRAD_NORM_NORMS = _declare("grad/norm/norms", Cadence.PROBE, Shape.PER_LAYER,
                           what="gradient L2 norm of a block's norm scales (QK-norm included)")
PARAM_NORM = _declare("param/norm", Cadence.PROBE, Shape.PER_LAYER,
                      what="L2 norm of a block's parameters after the step")
UPDATE_RMS = _declare("update/rms", Cadence.PROBE, Shape.PER_LAYER,
                      what="RMS of the unscaled Adam update m_hat / (sqrt(v_hat) + eps) of a block",
                      source=WORTSMAN)
OPTIM_EPS_REGIME = _declare("optim/eps_regime", Cadence.PROBE, Shape.PER_LAYER,
                            what="share of a block's entries with sqrt(v_hat) < eps, where eps "
                                 "dominates the update's denominator", source=WORTSMAN)
ACT_RMS = _declare("act/rms", Cadence.PROBE, Shape.PER_LAYER,
                   what="RMS of the residual stream after a block")
UPDATE_GRAD_COS = _declare("update/grad_cos", Cadence.PROBE, Shape.PER_LAYER,
                           what="cosine between a block's unscaled Adam update m_hat / (sqrt(v_hat) "
                                "+ eps) and its gradient; near 0 the update no longer follows the "
                                "descent direction", source=MOLYBOG)
GRAD_V_RATIO_MAX = _declare("grad/v_ratio_max", Cadence.PROBE, Shape.PER_LAYER,
                            what="largest g^2 / v_hat over a block's entries: the pre-clip gradient "
                                 "against Adam's bias-corrected second moment before this step "
                                 "(0 at the first step)", source=SPAM)
ACT_ATTN_OUT_RMS = _declare("act/attn_out_rms", Cadence.PROBE, Shape.PER_LAYER,
                            what="RMS of a block's attention output before any norm after it and "
                                 "before it joins the residual stream", source=SUBLAYER)
ACT_MLP_OUT_RMS = _declare("act/mlp_out_rms", Cadence.PROBE, Shape.PER_LAYER,
                           what="RMS of a block's MLP output before any norm after it and before "
                                "it joins the residual stream", source=SUBLAYER)
GRAD_RMS_EMBED = _declare("grad/rms/embed", Cadence.PROBE,
                          what="RMS of the embedding's gradient entries", source=WORTSMAN)
GRAD_RMS_LM_HEAD = _declare("grad/rms/lm_head", Cadence.PROBE,
                            what="RMS of the LM head's gradient entries", source=WORTSMAN)
PARAM_NORM_EMBED = _declare("param/norm/embed", Cadence.PROBE,
                            what="L2 norm of the embedding after the step")
LOGITS_MAX_ABS = _declare("logits/max_abs", Cadence.PROBE, what="max |output logit| of the batch",
                          source=WORTSMAN)
LOGITS_MEAN = _declare("logits/mean", Cadence.PROBE, what="mean output logit of the batch")

# ---- every `probes.attn_every` steps: the attention row, per probed layer and head, recomputed
# from each layer's actual q and k (after clip_qkv, QK-norm and RoPE)
ATTN_LOGIT_MAX = _declare("attn/logit_max", Cadence.ATTN, Shape.PER_HEAD, summary="max",
                          what="max attention logit <q, k> / sqrt(d_head); grows without "
                               "QK-norm at high learning rates", source=WORTSMAN)
ATTN_ENTROPY_MEAN = _declare("attn/entropy_mean", Cadence.ATTN, Shape.PER_HEAD, summary="mean",
                             what="mean entropy of the attention rows", source=ZHAI)
ATTN_ENTROPY_MIN = _declare("attn/entropy_min", Cadence.ATTN, Shape.PER_HEAD, summary="min",
                            what="min entropy of the attention rows (near 0: a head attends to one key)",
                            source=ZHAI)
ATTN_Q_NORM = _declare("attn/q_norm", Cadence.ATTN, Shape.PER_HEAD, summary="mean",
                       what="mean L2 norm of the queries")
ATTN_K_NORM = _declare("attn/k_norm", Cadence.ATTN, Shape.PER_HEAD, summary="mean",
                       what="mean L2 norm of the keys (a key head's norm for each query head)")

# ---- each read-out (host side)
TRAIN_LR = _declare("train/lr", Cadence.READ_OUT, what="learning rate of the last step")
TRAIN_TOKENS = _declare("train/tokens", Cadence.READ_OUT, what="tokens trained on so far")
TRAIN_TOKENS_PER_S = _declare("train/tokens_per_s", Cadence.READ_OUT,
                              what="training throughput since the previous read-out (wall clock)")
TRAIN_MFU = _declare("train/mfu", Cadence.READ_OUT,
                     what="model FLOP utilisation, 0..1 (CUDA devices with a known peak only)")
TRAIN_MASKED_TOKENS = _declare("train/masked_tokens", Cadence.READ_OUT,
                               what="labels removed by the repeated n-gram filter since the "
                                    "previous read-out", source=OLMO2)
SPIKE_SCORE_LOSS = _declare("spike/score_loss", Cadence.READ_OUT,
                            what="spike score of the CE loss: percent of points >= 7 std from the "
                                 "mean of the previous 1000", source=OLMO2)
SPIKE_SCORE_GRAD_NORM = _declare("spike/score_grad_norm", Cadence.READ_OUT,
                                 what="spike score of the grad norm, as `spike/score_loss`",
                                 source=OLMO2)
# OLMo-core's StabilityMonitorCallback (CE loss OR grad norm > mean + 6 std of a full window of
# 128): the running score of the last 10000 steps once there are that many, else the total.
SPIKE_OLMO_CORE = _declare("spike/olmo_core", Cadence.READ_OUT,
                           what="share of steps whose CE loss or grad norm > mean + 6 std of a full "
                                "window of 128: of the last 10000 steps, or of all until then",
                           source=OLMO_CORE)
# ...and the callback's own two metrics under its names (MLflow allows no parentheses, so
# OLMo-core's "spike/SpikeScore (total)" is "spike/SpikeScore_total" here).
SPIKE_OLMO_CORE_RUNNING = _declare("spike/SpikeScore", Cadence.READ_OUT,
                                   what="the callback's running score (last 10000 steps)",
                                   source=OLMO_CORE)
SPIKE_OLMO_CORE_TOTAL = _declare("spike/SpikeScore_total", Cadence.READ_OUT,
                                 what="the callback's score over all steps ('SpikeScore (total)')",
                                 source=OLMO_CORE)
SPIKE_ONLINE_LOSS = _declare("spike/online_loss", Cadence.READ_OUT,
                             what="per-series rule on the CE loss: share of the last 10000 steps "
                                  "> mean + 6 sample std of the previous 128")
SPIKE_ONLINE_GRAD_NORM = _declare("spike/online_grad_norm", Cadence.READ_OUT,
                                  what="per-series rule on the grad norm, as `spike/online_loss`")
SPIKE_COUNT = _declare("spike/count", Cadence.READ_OUT,
                       what="spike events so far, all series and rules (`spikes.csv`)")
TRAIN_REWINDS = _declare("train/rewinds", Cadence.READ_OUT,
                         what="rewinds so far (`train.on_spike = \"rewind\"`, `rewinds.csv`)")

# ---- evaluation and init (host side)
EVAL_LOSS = _declare("eval/loss", Cadence.EVAL, what="held-out cross-entropy")
INIT_GROWTH_ACT = _declare("init/growth_act", Cadence.ONCE,
                           what="growth exponent lambda of the activations at init", source=OLMO2)
INIT_GROWTH_GRAD = _declare("init/growth_grad", Cadence.ONCE,
                            what="growth exponent lambda of the gradients at init", source=OLMO2)

SPIKES_ARTIFACT = "spikes.csv"


def layer_key(prefix: str, layer: int) -> str:
    """`prefix/layer_{i}`, e.g. `layer_key(GRAD_NORM, 3) == "grad/norm/layer_3"`."""
    return f"{prefix}/layer_{layer}"


# The headline per-step training series (each declared at step cadence above).
STEP_SERIES: tuple[str, ...] = (
    TRAIN_LOSS,
    TRAIN_CE_LOSS,
    TRAIN_Z_LOSS,
    TRAIN_Z_LOSS_RAW,
    GRAD_NORM,
    GRAD_CLIP_COEF,
    OPTIM_STEP_SKIPPED,
)
