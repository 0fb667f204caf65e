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


def test_fused_loss_gradient_matches_autograd_reference():
    torch.manual_seed(1)
    logits = (torch.randn(4, 6, 13) * 3).requires_grad_(True)
    labels = torch.randint(0, 13, (4, 6))
    labels[1, 3:] = -100
    coef = 1e-2
    lm_loss(logits, labels, coef).loss.backward()
    ours = logits.grad.clone()

    ref_logits = logits.detach().clone().requires_grad_(True)
    keep = labels != -100
    lse = torch.logsumexp(ref_logits, -1)
    ce = F.cross_entropy(ref_logits.view(-1, 13), labels.view(-1), ignore_index=-100)
    (ce + coef * lse[keep].square().mean()).backward()
    torch.testing.assert_close(ours, ref_logits.grad, rtol=1e-5, atol=1e-7)


def test_fused_loss_gradcheck_float64():
    from stability.loss import _CrossEntropyZ

    torch.manual_seed(2)
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, -100, 2, 2, -100, 1])
    assert torch.autograd.gradcheck(
        lambda x: _CrossEntropyZ.apply(x, labels)[:2], (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_fused_linear_loss_equals_logits_path(chunk):
    from stability.loss import fused_lm_loss

    torch.manual_seed(3)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    weight = (torch.randn(19, 8) * 0.5).requires_grad_(True)
    labels = torch.randint(0, 19, (3, 7))
    labels[0, :4] = -100
    coef = 1e-2
    fused = fused_lm_loss(hidden, weight, labels, coef, chunk_rows=chunk, stats=True)
    (fused.loss * 2.0).backward()  # a non-unit upstream gradient
    logits = (hidden @ weight.T).detach()
    assert fused.logit_max_abs.item() == pytest.approx(logits.abs().max().item(), rel=1e-6)
    assert fused.logit_mean.item() == pytest.approx(logits.mean().item(), rel=1e-5, abs=1e-7)
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()

    hidden.grad = weight.grad = None
    ref = lm_loss(hidden @ weight.T, labels, coef)
    (ref.loss * 2.0).backward()
    for a, b in zip(fused[:5], ref[:5]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_h, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, weight.grad, rtol=1e-5, atol=1e-6)


def test_fused_log_z_equals_logsumexp():
    from stability.loss import fused_lm_loss

    torch.manual_seed(4)
    hidden, weight = torch.randn(2, 5, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (2, 5))
    parts = fused_lm_loss(hidden, weight, labels, 1e-4, chunk_rows=3)
    x = (hidden @ weight.T).double().numpy()
    expected = np.log(np.exp(x).sum(-1))
    np.testing.assert_allclose(parts.log_z.numpy(), expected, rtol=1e-5)


def test_fused_loss_hidden_only_and_plain_backward_match_the_logits_path():
    """weight without grad (probe passes) skips its product; a unit upstream gradient (the
    buffers handed on as they are) gives the same grads as the explicit logits path."""
    from stability.loss import fused_lm_loss

    torch.manual_seed(5)
    hidden = torch.randn(4, 6, 8, requires_grad=True)
    weight = torch.randn(13, 8) * 0.5
    labels = torch.randint(0, 13, (4, 6))
    fused_lm_loss(hidden, weight, labels, 1e-3, chunk_rows=5).loss.backward()
    g_frozen = hidden.grad.clone()
    hidden.grad = None
    weight.requires_grad_(True)
    fused_lm_loss(hidden, weight, labels, 1e-3, chunk_rows=5).loss.backward()
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    lm_loss(hidden @ weight.T, labels, 1e-3).loss.backward()
    torch.testing.assert_close(g_frozen, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_h, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, weight.grad, rtol=1e-5, atol=1e-6)


def test_fused_loss_second_backward_is_a_clear_error():
    from stability.loss import fused_lm_loss

    hidden = torch.randn(3, 4, requires_grad=True)
    loss = fused_lm_loss(hidden, torch.randn(5, 4), torch.randint(0, 5, (3,)), 0.0).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_loss_does_three_matmuls_per_chunk():
    """logits, the hidden gradient and the weight gradient: one matmul each per chunk, no more
    (counted at the dispatcher, so wasted work shows up without timing anything)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from stability.loss import fused_lm_loss

    class CountMatmuls(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm,
                                       torch.ops.aten.addmm_):
                CountMatmuls.count += 1
            return func(*args, **(kwargs or {}))

    hidden = torch.randn(24, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (24,))
    with CountMatmuls():
        fused_lm_loss(hidden, weight, labels, 1e-4, chunk_rows=5)  # 5 chunks
    assert CountMatmuls.count == 3 * 5
    CountMatmuls.count = 0
    with CountMatmuls():
        fused_lm_loss(hidden, weight.detach(), labels, 1e-4, chunk_rows=5)
    assert CountMatmuls.count == 2 * 5  # no weight gradient wanted
