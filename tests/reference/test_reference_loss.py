"""CE and z-loss against OLMo-core's `cross_entropy_loss` itself, values and gradients, with
masked (-100) labels: our logits path (`lm_loss`) and the trainer's fused head path. In fp32, the
precision OLMo-core computes the loss in (it casts the logits to fp32)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("olmo_core")

from olmo_core.nn.functional import cross_entropy_loss  # noqa: E402

from stability.loss import fused_lm_loss, lm_loss  # noqa: E402

Z = 1e-5  # OLMo 2's z_loss_multiplier


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(6, 40, 64, generator=g, dtype=torch.float32)
    weight = (torch.randn(300, 64, generator=g, dtype=torch.float32) * 0.5).requires_grad_()
    labels = torch.randint(0, 300, (6, 40), generator=g)
    labels[torch.rand(6, 40, generator=g) < 0.3] = -100  # masked positions (n-gram filter, padding)
    labels[2] = -100  # a fully masked row
    return hidden.requires_grad_(), weight, labels


def _reference(hidden, weight, labels):
    logits = (hidden @ weight.T).view(-1, weight.shape[0])
    ce, z = cross_entropy_loss(logits, labels.view(-1), compute_z_loss=True, z_loss_multiplier=Z)
    return ce, z


@pytest.mark.parametrize("path", ["logits", "fused"])
def test_ce_and_z_loss_values_and_gradients_equal_olmo_core(path):
    hidden, weight, labels = _data()
    ce_ref, z_ref = _reference(hidden, weight, labels)
    g_ref = torch.autograd.grad(ce_ref + z_ref, (hidden, weight))
    if path == "logits":
        parts = lm_loss(hidden @ weight.T, labels, Z)
    else:
        parts = fused_lm_loss(hidden, weight, labels, Z)
    g_ours = torch.autograd.grad(parts.loss, (hidden, weight))
    torch.testing.assert_close(parts.ce, ce_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(parts.z_loss, z_ref, rtol=1e-6, atol=0)
    for mine, theirs in zip(g_ours, g_ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
