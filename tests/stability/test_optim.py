"""AdamW (vs torch's), parameter groups, independent weight decay, skip-step and clipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stability.config import OptimConfig
from stability.optim import AdamW, SkipStep, clip_grad_norm_, param_groups


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(4))


def _pairs(seed: int = 0):
    torch.manual_seed(seed)
    ours = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(5))]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    return ours, ref


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch(wd):
    ours, ref = _pairs()
    a = AdamW([{"params": ours, "weight_decay": wd}], lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    b = torch.optim.AdamW([{"params": ref, "weight_decay": wd}], lr=3e-3, betas=(0.9, 0.95),
                          eps=1e-8, foreach=False)
    for i in range(25):
        for p, q in zip(ours, ref):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        a.step(torch.tensor(1.0) if i % 3 == 0 else None)  # the factor path is the same rule
        b.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_factor_zero_skips_everything():
    ours, _ = _pairs()
    opt = AdamW([{"params": ours, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for p in ours:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in ours]
    state = {k: v.clone() for k, v in opt.state[ours[0]].items()}
    for p in ours:
        p.grad = torch.randn_like(p) * 100
    opt.step(torch.tensor(0.0))
    for p, b in zip(ours, before):
        assert torch.equal(p, b)
    for k, v in opt.state[ours[0]].items():
        assert torch.equal(v, state[k]), k


def test_param_groups_embedding_decay_toggle():
    toy = _Toy()
    on = {g["name"]: g["weight_decay"] for g in param_groups(toy, OptimConfig(
        weight_decay=0.1, embedding_weight_decay=True))}
    off = {g["name"]: g["weight_decay"] for g in param_groups(toy, OptimConfig(
        weight_decay=0.1, embedding_weight_decay=False))}
    assert on == {"decay": 0.1, "embed": 0.1, "no_decay": 0.0}
    assert off == {"decay": 0.1, "embed": 0.0, "no_decay": 0.0}
    groups = param_groups(toy, OptimConfig())
    names = {g["name"]: [id(p) for p in g["params"]] for g in groups}
    assert names["embed"] == [id(toy.embed.weight)]
    assert names["no_decay"] == [id(toy.norm_weight)]


def test_independent_weight_decay_scales_with_schedule_not_lr():
    # With zero gradients Adam's update is 0, so one step only applies the decay factor.
    peak, wd, sched = 1e-2, 1e-4, 0.5
    toy = _Toy()
    groups = param_groups(toy, OptimConfig(lr=peak, weight_decay=wd, independent_weight_decay=True))
    assert groups[0]["weight_decay"] == pytest.approx(wd / peak)
    opt = AdamW(groups, lr=peak, betas=(0.9, 0.95), eps=1e-8)
    for g in opt.param_groups:
        g["lr"] = peak * sched
    w0 = toy.proj.weight.detach().clone()
    for p in toy.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # Wortsman et al.: theta -= schedule * wd * theta.
    torch.testing.assert_close(toy.proj.weight.detach(), w0 * (1 - sched * wd))


def test_skip_step_rule_against_numpy():
    rng = np.random.default_rng(0)
    losses = list(rng.normal(3.0, 0.05, 150))
    norms = list(rng.normal(1.0, 0.1, 150))
    losses[100] = 9.0  # a loss spike after the history is full
    norms[120] = 5.0  # a grad-norm spike
    losses[10] = 50.0  # before min_history: never skipped (and out of the window by t=100)
    window, min_hist, sigma = 64, 32, 6.0
    skip = SkipStep(window, min_hist, sigma, torch.device("cpu"))
    got = [float(skip(torch.tensor(a), torch.tensor(b))) for a, b in zip(losses, norms)]
    expected = []
    for t in range(150):
        if t < min_hist:
            expected.append(1.0)
            continue
        flag = False
        for series in (losses, norms):
            prev = np.array(series[max(0, t - window):t])
            flag |= series[t] - prev.mean() > sigma * prev.std(ddof=1)
        expected.append(0.0 if flag else 1.0)
    assert got == expected
    assert got[100] == 0.0 and got[120] == 0.0 and got[10] == 1.0


def test_clip_matches_torch():
    torch.manual_seed(1)
    ours, ref = _pairs()
    for p, q in zip(ours, ref):
        g = torch.randn_like(p) * 3
        p.grad, q.grad = g.clone(), g.clone()
    norm, coef, tensor_norms = clip_grad_norm_(ours, 1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-6)
    assert coef.item() == pytest.approx(1.0 / (ref_norm.item() + 1e-6), rel=1e-6)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad)
    assert [n.item() for n in tensor_norms] == pytest.approx(
        [(q.grad / coef).norm().item() for q in ours], rel=1e-5)
    norm_off, coef_off, _ = clip_grad_norm_(ours, 0.0)
    assert coef_off.item() == 1.0 and norm_off.item() == pytest.approx(1.0, rel=1e-5)
