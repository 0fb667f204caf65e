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


@pytest.mark.parametrize("embed", [False, True])
@pytest.mark.parametrize("norms", [False, True])
def test_param_groups_decay_toggles(embed, norms):
    toy = _Toy()
    groups = param_groups(toy, OptimConfig(weight_decay=0.1, embedding_weight_decay=embed,
                                           norm_weight_decay=norms))
    assert {g["name"]: g["weight_decay"] for g in groups} == {
        "decay": 0.1, "embed": 0.1 if embed else 0.0, "norms": 0.1 if norms else 0.0}
    names = {g["name"]: [id(p) for p in g["params"]] for g in groups}
    assert names == {"decay": [id(toy.proj.weight)], "embed": [id(toy.embed.weight)],
                     "norms": [id(toy.norm_weight)]}


def test_norm_weight_decay_decays_norm_scales():
    """With zero gradients one step applies only the decay: norm scales shrink by lr * wd."""
    toy = _Toy()
    opt = AdamW(param_groups(toy, OptimConfig(lr=1e-2, weight_decay=0.1)), lr=1e-2,
                betas=(0.9, 0.95), eps=1e-8)
    for p in toy.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(toy.norm_weight.detach(), torch.full((4,), 1 - 1e-2 * 0.1))


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


def _skip_rule(losses, norms, window, sigma):
    """OLMo-core's SkipStepOptimizer decision written out: judge once max(2, window // 2) values
    are known counting the current one; skip unless x - mean <= sigma * sample std of the
    previous (up to `window`) values, for the loss and (when given) the grad norm."""
    out = []
    for t in range(len(losses)):
        if t + 1 < max(2, window // 2):
            out.append(1.0)
            continue
        ok = True
        for series in (losses, norms) if norms is not None else (losses,):
            prev = np.array(series[max(0, t - window):t], dtype=np.float64)
            ok &= bool(series[t] - prev.mean() <= sigma * prev.std(ddof=1))
        out.append(1.0 if ok else 0.0)
    return out


@pytest.mark.parametrize("with_norm", [True, False])
def test_skip_step_rule_against_explicit_formula(with_norm):
    rng = np.random.default_rng(0)
    losses = list(rng.normal(3.0, 0.05, 150).astype(np.float32))
    norms = list(rng.normal(1.0, 0.1, 150).astype(np.float32))
    losses[100] = 9.0  # a loss spike after the history is full
    norms[120] = 5.0  # a grad-norm spike
    losses[31] = 9.0  # the first judged step (32 values counting it, 31 previous)
    window, sigma = 64, 6.0

    def run(losses):
        skip = SkipStep(window, sigma, torch.device("cpu"))
        got = [float(skip(torch.tensor(a), torch.tensor(b) if with_norm else None))
               for a, b in zip(losses, norms)]
        assert got == _skip_rule(losses, norms if with_norm else None, window, sigma)
        return got

    got = run(losses)
    assert got[100] == 0.0 and got[31] == 0.0
    assert got[120] == (0.0 if with_norm else 1.0)
    early = list(losses)
    early[31], early[30] = early[32], 9.0  # one step before the first judged one: never skipped
    assert run(early)[30] == 1.0


def test_skip_step_skips_non_finite_and_while_it_is_in_the_window():
    skip = SkipStep(8, 6.0, torch.device("cpu"))
    losses = [1.0 + 0.01 * (i % 3) for i in range(30)]
    losses[10] = float("nan")
    got = [float(skip(torch.tensor(x), torch.tensor(1.0 + 0.01 * (i % 2))))
           for i, x in enumerate(losses)]
    assert got[10] == 0.0 and got[11:19] == [0.0] * 8 and got[19] == 1.0


def test_skip_step_state_round_trip():
    a, b = SkipStep(16, 6.0, torch.device("cpu")), SkipStep(16, 6.0, torch.device("cpu"))
    rng = np.random.default_rng(1)
    for x in rng.normal(2, 0.1, 20):
        a(torch.tensor(x), torch.tensor(1.0))
    b.load_state_dict(a.state_dict())
    for x in [2.0, 9.0, 2.1]:
        assert torch.equal(a(torch.tensor(x), torch.tensor(1.0)), b(torch.tensor(x), torch.tensor(1.0)))


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
