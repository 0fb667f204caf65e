"""Which declared metrics a hook can fill from a loop it does not own.

A foreign loop hands the hook its loss, its gradients, its optimizer and (through forward
hooks) the blocks' and sublayers' outputs, but not its logits: the z-loss, log Z and logit
statistics and skip-step stay our trainer's, and so do the update/gradient cosine and g^2 / v_hat,
which need the gradients on both sides of the optimizer step (a host such as the HF Trainer zeroes
them before its step-end callback). The same declarations (names, cadences, compute functions) as
the trainer's, just fewer of them; the attention row only where the layer map gives q and k.
"""

from __future__ import annotations

from stability import metric_names as M
from stability.probes.registry import Cadence, Metric, Registry

STEP = (M.TRAIN_LOSS, M.GRAD_NORM, M.GRAD_CLIP_COEF, M.GRAD_NORM_EMBED, M.GRAD_NORM_LM_HEAD)
PROBE = (M.GRAD_RMS, M.GRAD_NORM_ATTN, M.GRAD_NORM_MLP, M.GRAD_NORM_NORMS, M.GRAD_RMS_EMBED,
         M.GRAD_RMS_LM_HEAD, M.PARAM_NORM, M.PARAM_NORM_EMBED, M.UPDATE_RMS, M.OPTIM_EPS_REGIME,
         M.ACT_RMS, M.ACT_ATTN_OUT_RMS, M.ACT_MLP_OUT_RMS)
OPTIMIZER = (M.PARAM_NORM, M.PARAM_NORM_EMBED, M.UPDATE_RMS, M.OPTIM_EPS_REGIME)  # need Adam state


def hook_registry(attention: bool, adam: bool) -> Registry:
    """The declarations a hook fills, in `M.REGISTRY` order (rows keep the trainer's layout
    order); `attention`: the layer map gives q and k; `adam`: an Adam-style optimizer state."""
    keep = set(STEP) | set(PROBE)
    if not adam:
        keep -= set(OPTIMIZER)
    def wanted(m: Metric) -> bool:
        if m.cadence is Cadence.ATTN:
            return attention
        return m.cadence in (Cadence.STEP, Cadence.PROBE) and m.key in keep

    return Registry(m for m in M.REGISTRY if wanted(m))


def skipped(registry: Registry) -> list[str]:
    """The trainer's device metrics `registry` leaves out (for the one line that says so)."""
    have = set(registry)
    return list(dict.fromkeys(m.key for m in M.REGISTRY if m.cadence.on_device and m not in have))
