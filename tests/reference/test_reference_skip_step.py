"""Our on-device skip-step against OLMo-core's `SkipStepAdamW` itself: the same skip decision on
every step of planted, heavy-tailed and non-finite series, and in a short training of a tiny model
side by side (same skipped steps, same Adam step counters)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("olmo_core")

from olmo_core.optim import SkipStepAdamW  # noqa: E402

from model import build, model_preset  # noqa: E402
from stability.config import OptimConfig  # noqa: E402
from stability.loss import fused_lm_loss  # noqa: E402
from stability.optim import AdamW, SkipStep, clip_grad_norm_, param_groups  # noqa: E402


def _reference_factors(losses, norms, window: int, sigma: float) -> list[float]:
    opt = SkipStepAdamW([torch.nn.Parameter(torch.zeros(1))], rolling_interval_length=window,
                        sigma_factor=sigma)
    out = []
    for i, loss in enumerate(losses):
        opt.latest_loss = torch.tensor(loss, dtype=torch.float32)
        if norms is not None:
            opt.latest_grad_norm = torch.tensor(norms[i], dtype=torch.float32)
        out.append(float(opt.get_step_factor()))
    return out


def _our_factors(losses, norms, window: int, sigma: float) -> list[float]:
    skip = SkipStep(window, sigma, torch.device("cpu"))
    return [float(skip(torch.tensor(loss, dtype=torch.float32),
                       None if norms is None else torch.tensor(norms[i], dtype=torch.float32)))
            for i, loss in enumerate(losses)]


def _series(kind: str, n: int = 600, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    if kind == "heavy":  # Student-t noise: outliers of every size, many near the threshold
        losses = 3.0 + 0.05 * rng.standard_t(2.0, n)
        norms = np.abs(1.0 + 0.2 * rng.standard_t(1.5, n))
    else:
        losses, norms = rng.normal(3.0, 0.05, n), np.abs(rng.normal(1.0, 0.1, n))
    if kind == "planted":
        for t in (63, 64, 200, 201, 350):
            losses[t] = 4.0
        norms[[10, 127, 128, 400]] = 8.0
    if kind == "nonfinite":
        losses[[70, 300]] = [math.nan, math.inf]
        norms[[150, 450]] = [math.inf, math.nan]
        losses[500:540] = 3.0  # a constant stretch
    return list(losses.astype(np.float32)), list(norms.astype(np.float32))


@pytest.mark.parametrize("kind", ["planted", "heavy", "nonfinite"])
@pytest.mark.parametrize("window", [128, 16])
@pytest.mark.parametrize("with_norm", [True, False])
def test_same_decision_on_every_step(kind, window, with_norm):
    losses, norms = _series(kind)
    norms = norms if with_norm else None
    want = _reference_factors(losses, norms, window, 6.0)
    assert _our_factors(losses, norms, window, 6.0) == want
    assert 0.0 in want  # the series exercise the skip


def test_planted_spike_at_step_63_is_skipped():
    """The judged window counts the current value: step 63 (the 64th) is judged."""
    losses, norms = _series("planted")
    assert _our_factors(losses, norms, 128, 6.0)[63] == 0.0


def _batches(vocab: int, steps: int, spike_steps: tuple[int, ...]) -> list[torch.Tensor]:
    """Low-entropy text-like rows (a small token subset), and at `spike_steps` rows of uniform
    random tokens: a batch the model has never seen, so its loss spikes."""
    g = torch.Generator().manual_seed(0)
    out = []
    for step in range(steps):
        if step in spike_steps:
            out.append(torch.randint(0, vocab, (4, 33), generator=g))
        else:
            out.append(torch.randint(0, 16, (4, 33), generator=g))
    return out


def test_side_by_side_training_same_skips_and_step_counts():
    cfg = dataclasses.replace(model_preset("olmo2-tiny"), vocab_size=256, d_model=64, n_heads=4,
                              mlp_hidden=128, n_layers=2, max_seq_len=64)
    window, steps, spikes = 16, 60, (5, 30, 31, 50)
    ocfg = OptimConfig(lr=3e-3, weight_decay=0.1, skip_step=True, skip_step_window=window)
    ours = build(cfg, generator=torch.Generator().manual_seed(0))
    theirs = build(cfg, generator=torch.Generator().manual_seed(0))
    groups = param_groups(ours, ocfg)
    opt_ours = AdamW(groups, lr=ocfg.lr, betas=tuple(ocfg.betas), eps=ocfg.eps)
    skip = SkipStep.from_config(ocfg, torch.device("cpu"))
    theirs_groups = [{"params": list(g["params"]), "weight_decay": g["weight_decay"]}
                     for g in param_groups(theirs, ocfg)]
    opt_theirs = SkipStepAdamW(theirs_groups, lr=ocfg.lr, betas=tuple(ocfg.betas), eps=ocfg.eps,
                               rolling_interval_length=window, sigma_factor=6)
    skipped_ours, skipped_theirs = [], []
    for batch in _batches(cfg.vocab_size, steps, spikes):
        ids, labels = batch[:, :-1], batch[:, 1:]
        for model, opt, log in ((ours, opt_ours, skipped_ours), (theirs, opt_theirs, skipped_theirs)):
            parts = fused_lm_loss(model.features(ids), model.lm_head.weight, labels, 1e-5)
            parts.loss.backward()
            params = [p for p in model.parameters()]
            norm, _, _ = clip_grad_norm_(params, 1.0)
            if opt is opt_ours:
                factor = skip(parts.ce, norm)
                opt.step(factor)
                log.append(float(1 - factor))
            else:  # what OLMo-core's train module does: CE loss, then the clipped grad norm
                opt.latest_loss = parts.ce.detach()
                opt.latest_grad_norm = norm
                opt.step()
                log.append(float(opt.step_skipped))
            opt.zero_grad(set_to_none=True)
    assert skipped_ours == skipped_theirs
    assert [i for i, s in enumerate(skipped_ours) if s] == [30, 50]  # step 5: not judged yet
    counts_ours = {float(opt_ours.state[p]["step"]) for p in ours.parameters()}
    counts_theirs = {float(opt_theirs.state[p]["step"]) for p in theirs.parameters()}
    assert counts_ours == counts_theirs == {steps - 2.0}
