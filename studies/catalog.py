"""The studies, as data: one grid spec per finding of the OLMo 2 stability section, and the
comparisons (`Finding`) that turn its runs into rows of the findings table.

Each finding is "arm minus baseline, paired on seeds, should be positive (or negative)", with
what the paper reports next to it. The grids live with the other bundled grids
(ablations/grids/study_*.toml) so `stability grid run study_init` runs one alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studies import measures as X

UP, DOWN = "+", "-"


@dataclass(frozen=True)
class Finding:
    """One row of the findings table: `measure` of `arm` minus the study's baseline, per seed."""

    arm: str
    measure: X.Measure
    expect: str  # UP: the paper says the arm's value is higher; DOWN: lower
    paper: str  # what the paper reports, with its number where it gives one
    lr: float | None = None  # one learning rate of a sweep (None: the grid's only one)


@dataclass(frozen=True)
class Study:
    name: str  # also its grid's name (ablations/grids/<name>.toml) and MLflow experiment
    title: str
    claim: str  # the report's finding in one sentence
    findings: tuple[Finding, ...]
    figures: tuple[str, ...]  # the report figures (file stems) that show it
    growth_widths: tuple[int, ...] = field(default=())  # also measure lambda vs d_model at init


STUDIES: tuple[Study, ...] = (
    Study(
        "study_ngram", "Repeated n-grams",
        "Repeated n-grams cause gradient-norm spikes; OLMo 2's filter (masking them) removes them.",
        (Finding("unfiltered", X.SPIKE_SCORE_GRAD, UP, "spikes with repeats kept (figure, no number)"),
         Finding("unfiltered", X.GRAD_EXCURSION, UP, "grad-norm spikes with repeats kept"),
         Finding("unfiltered", X.MAX_GRAD_NORM, UP, "larger grad norm with repeats kept"),
         Finding("clean", X.GRAD_EXCURSION, DOWN, "(ours) data without repeats spikes least")),
        ("grad_norm_curves", "layer_grad_heatmap_worst_arm_unfiltered")),
    Study(
        "study_init", "Initialisation",
        "N(0, 0.02) everywhere spikes less than the scaled (mitchell) init under a short warmup, "
        "and keeps the growth exponents near 0 across widths.",
        (Finding("mitchell", X.SPIKE_SCORE_GRAD, UP, "grad-norm spike score 0.40 (mitchell) vs 0.03"),
         Finding("mitchell", X.GRAD_EXCURSION, UP, "more grad-norm spikes with mitchell"),
         Finding("mitchell", X.FINAL_EVAL_LOSS, UP, "(ours) a worse loss with mitchell")),
        ("grad_norm_curves", "loss_curves"), growth_widths=(128, 256, 512, 1024, 2048)),
    Study(
        "study_norm", "Reordered norm and QK-norm",
        "Reordered (post-sublayer) RMSNorm with QK-norm spikes less than pre-norm without QK-norm.",
        (Finding("pre_norm_no_qk_norm", X.SPIKE_SCORE_GRAD, UP, "grad-norm spike score 0.108 vs 0.069"),
         Finding("pre_norm_no_qk_norm", X.GRAD_EXCURSION, UP, "grad-norm spikes without both"),
         Finding("pre_norm_no_qk_norm", X.MAX_GRAD_NORM, UP, "larger grad norm without both"),
         Finding("pre_norm_no_qk_norm", X.MAX_ATTN_LOGIT, UP, "(mechanism) attention logits grow"),
         Finding("no_qk_norm", X.MAX_ATTN_LOGIT, UP, "(mechanism) QK-norm bounds the logits"),
         Finding("no_qk_norm", X.SPIKE_SCORE_GRAD, UP, "(ours) QK-norm alone: spikes without it"),
         Finding("no_qk_norm", X.GRAD_EXCURSION, UP, "(ours) QK-norm alone: spikes without it")),
        ("grad_norm_curves", "attn_logit_curves")),
    Study(
        "study_eps", "AdamW epsilon",
        "AdamW eps 1e-8 trains better than 1e-5, whose updates shrink where sqrt(v_hat) < eps.",
        (Finding("eps_1e5", X.FINAL_EVAL_LOSS, UP, "higher loss with eps 1e-5 (figure, no number)"),
         Finding("eps_1e5", X.GRAD_NORM_LATE, UP, "larger grad norm with eps 1e-5 (figure)"),
         Finding("eps_1e5", X.EPS_REGIME, UP, "(mechanism) more entries in the eps regime"),
         Finding("eps_1e5", X.UPDATE_RMS, DOWN, "(mechanism, Wortsman et al.) smaller update RMS")),
        ("update_rms_and_eps",)),
    Study(
        "study_emb_wd", "Weight decay on embeddings",
        "Decaying the embeddings shrinks their norm and brings more spikes; OLMo 2 does not decay them.",
        (Finding("emb_wd", X.EMBED_NORM, DOWN, "embedding norm shrinks with decay (figure)"),
         Finding("emb_wd", X.SPIKE_SCORE_GRAD, UP, "grad-norm spike score 0.16 (decay) vs 0.092"),
         Finding("emb_wd", X.GRAD_EXCURSION, UP, "more grad-norm spikes with decay")),
        ("embedding_norm_curves", "grad_norm_curves")),
    Study(
        "study_z_loss", "z-loss",
        "z-loss keeps log Z (the output logits' logsumexp) from drifting.",
        (Finding("no_z_loss", X.LOG_Z, UP, "log Z drifts without z-loss (Wortsman et al., figure)"),
         Finding("z_1e4", X.LOG_Z, DOWN, "(ours) a larger coefficient holds log Z lower")),
        ("log_z_curves",)),
    Study(
        "study_lr", "LR sensitivity and attention-logit growth",
        "Without qk-layernorm the final loss is more sensitive to the learning rate and the "
        "attention logits grow at high learning rates (Wortsman et al. Fig. 1).",
        (Finding("no_qk_norm", X.LR_SENSITIVITY, UP, "higher LR sensitivity without qk-layernorm"),
         Finding("no_qk_norm", X.MAX_ATTN_LOGIT, UP, "logits grow without qk-layernorm", lr=1e-1),
         Finding("no_qk_norm", X.MAX_ATTN_LOGIT, UP, "logits grow without qk-layernorm", lr=3e-1),
         Finding("no_qk_norm", X.FINAL_EVAL_LOSS, UP, "worse loss at the highest lr", lr=3e-1)),
        ("lr_sensitivity", "attn_logit_curves")),
)

BY_NAME = {s.name: s for s in STUDIES}
