"""The loss (CE + z-loss) and the LR schedule against explicit formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stability.loss import lm_loss
from stability.schedule import lr_at


def test_z_loss_equals_explicit_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = -100
    coef = 1e-4
    parts = lm_loss(logits, labels, coef)

    x = logits.double().numpy()
    lab = labels.numpy()
    keep = lab != -100
    log_z = np.log(np.exp(x).sum(-1))  # explicit log-sum-exp, float64
    expected_raw = (log_z[keep] ** 2).mean()
    target = np.take_along_axis(x, np.clip(lab, 0, None)[..., None], -1)[..., 0]
    expected_ce = (log_z - target)[keep].mean()

    assert parts.z_loss_raw.item() == pytest.approx(expected_raw, rel=1e-5)
    assert parts.z_loss.item() == pytest.approx(coef * expected_raw, rel=1e-5)
    assert parts.ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert parts.loss.item() == pytest.approx(expected_ce + coef * expected_raw, rel=1e-5)
    ref_ce = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert parts.ce.item() == pytest.approx(ref_ce.item(), rel=1e-5)


def test_z_loss_off_and_all_ignored():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    assert lm_loss(logits, labels, 0.0).z_loss.item() == 0.0
    parts = lm_loss(logits, torch.full_like(labels, -100), 1e-4)
    assert parts.loss.item() == 0.0 and math.isfinite(parts.ce.item())


def test_loss_is_fp32_for_bf16_logits():
    logits = torch.randn(2, 4, 9).to(torch.bfloat16)
    labels = torch.randint(0, 9, (2, 4))
    parts = lm_loss(logits, labels, 1e-4)
    assert parts.loss.dtype == torch.float32
    ref = F.cross_entropy(logits.float().view(-1, 9), labels.view(-1))
    assert parts.ce.item() == pytest.approx(ref.item(), rel=1e-6)


def test_cosine_schedule_hand_values():
    kw = dict(peak=1.0, total=110, warmup=10, kind="cosine", alpha_f=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lr_at(110, **kw) == pytest.approx(0.1)


def test_linear_and_constant_schedules():
    kw = dict(peak=2.0, total=20, warmup=0, alpha_f=0.0)
    assert lr_at(0, kind="linear", **kw) == pytest.approx(2.0)
    assert lr_at(10, kind="linear", **kw) == pytest.approx(1.0)
    assert lr_at(15, kind="constant", **kw) == pytest.approx(2.0)
    assert lr_at(3, peak=1.0, total=20, warmup=4, kind="constant", alpha_f=0.1) == pytest.approx(1.0)
