"""The precursor signals (update/gradient cosine, largest g^2 / v_hat, sublayer output RMS)
against explicit computations: Adam's moments replayed by hand in float64, and the blocks'
sublayers evaluated by their placement's formula."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from model import build, model_preset
from stability import metric_names as M
from stability.config import load_config
from stability.optim import clip_grad_norm_
from stability.probes.layer_map import layer_map_for
from stability.probes.layout import param_layout
from stability.probes.stats import grad_v_ratio_max, param_update_stats
from stability.probes.sublayers import SublayerOutputs
from stability.train import Trainer

BETAS = (0.9, 0.95)
EPS = 1e-8


def _tiny(**overrides):
    cfg = model_preset("olmo2-tiny")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return build(cfg, generator=torch.Generator().manual_seed(0))


def _backward(model, seed: int) -> None:
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    model.zero_grad(set_to_none=True)
    model(ids).logsumexp(-1).mean().backward()


def _layer_params(layout, i):
    return [p for n, p in zip(layout.names, layout.params) if n.startswith(f"blocks.{i}.")]


def test_update_grad_cos_equals_adam_replayed_by_hand():
    # Three steps of torch's AdamW on different batches, so m_hat, v_hat and g all differ; the
    # moments are replayed from the recorded gradients in float64, independently of the state.
    model = _tiny()
    layout = param_layout(model)
    opt = torch.optim.AdamW(layout.params, lr=1e-3, betas=BETAS, eps=EPS, weight_decay=0.0)
    grads: list[dict[int, torch.Tensor]] = []
    for seed in range(3):
        _backward(model, seed)
        grads.append({id(p): p.grad.detach().double().clone() for p in layout.params})
        opt.step()
    stats = param_update_stats(layout, opt)  # gradients of the last step still held
    b1, b2 = BETAS
    t = len(grads)
    for i in range(model.cfg.n_layers):
        us, gs = [], []
        for p in _layer_params(layout, i):
            m = sum((1 - b1) * b1 ** (t - 1 - k) * g[id(p)] for k, g in enumerate(grads))
            v = sum((1 - b2) * b2 ** (t - 1 - k) * g[id(p)].square() for k, g in enumerate(grads))
            us.append((m / (1 - b1**t) / ((v / (1 - b2**t)).sqrt() + EPS)).flatten())
            gs.append(grads[-1][id(p)].flatten())
        u, g = torch.cat(us), torch.cat(gs)
        expected = (u @ g / (u.norm() * g.norm())).item()
        assert stats["update_grad_cos"][i].item() == pytest.approx(expected, abs=1e-5)
        assert 0.0 < expected < 1.0  # neither the gradient itself nor unrelated to it


def test_update_grad_cos_is_zero_without_gradients():
    model = _tiny()
    layout = param_layout(model)
    opt = torch.optim.AdamW(layout.params, lr=1e-3, betas=BETAS, eps=EPS)
    _backward(model, 0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert param_update_stats(layout, opt)["update_grad_cos"].abs().sum().item() == 0.0


def test_grad_v_ratio_max_is_the_pre_clip_gradient_against_the_previous_moment():
    # After one step v_hat = g1^2, so before the second the ratio is max((g2 / g1)^2) per layer,
    # with g2 the gradient before clipping (the held one divided by the clip factor).
    model = _tiny()
    layout = param_layout(model)
    opt = torch.optim.AdamW(layout.params, lr=1e-3, betas=BETAS, eps=EPS, weight_decay=0.0)
    _backward(model, 0)
    first = grad_v_ratio_max(layout, opt, torch.ones(()))
    assert first.abs().sum().item() == 0.0  # no second moment yet: 0, not inf
    g1 = {id(p): p.grad.detach().double().clone() for p in layout.params}
    opt.step()
    _backward(model, 1)
    g2 = {id(p): p.grad.detach().double().clone() for p in layout.params}
    norm, coef, _ = clip_grad_norm_(layout.params, 0.05)
    assert coef.item() < 0.5  # the held gradient really was scaled down
    ratio = grad_v_ratio_max(layout, opt, coef)
    for i in range(model.cfg.n_layers):
        expected = max((g2[id(p)].square() / g1[id(p)].square().clamp(min=EPS**2)).max().item()
                       for p in _layer_params(layout, i))
        assert ratio[i].item() == pytest.approx(expected, rel=1e-4)
    assert ratio.min().item() > 1.0  # a max over many entries of a ratio of two batches' squares


@pytest.mark.parametrize("block", ["reordered_norm", "pre_norm", "post_norm"])
def test_sublayer_rms_equals_the_placement_formula(block):
    model = _tiny(block=block)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    inputs: list[torch.Tensor] = []
    pre = [b.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in model.blocks]
    capture = SublayerOutputs(model, layer_map_for(model))
    capture.armed = True
    with torch.no_grad():
        model.features(ids)
    for h in pre:
        h.remove()
    got = capture.take()
    assert got is not None and not capture.armed
    with torch.no_grad():
        for i, (b, x) in enumerate(zip(model.blocks, inputs)):
            a = b.attn(b.attn_norm(x) if block == "pre_norm" else x, None)
            h = {"reordered_norm": x + b.attn_norm(a), "pre_norm": x + a,
                 "post_norm": b.attn_norm(x + a)}[block]
            m = b.mlp(b.mlp_norm(h) if block == "pre_norm" else h)
            assert got["attn"][i].sqrt().item() == pytest.approx(a.double().square().mean().sqrt().item(),
                                                                 rel=1e-5)
            assert got["mlp"][i].sqrt().item() == pytest.approx(m.double().square().mean().sqrt().item(),
                                                                rel=1e-5)
    with torch.no_grad():
        model.features(ids)  # disarmed: records nothing
    assert capture.take() is None
    capture.close()


def test_trainer_logs_the_precursor_signals_per_layer(tmp_path):
    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/m.db"', f'train.checkpoint_dir="{tmp_path}/ck"',
        "data.max_bytes=300000", "train.steps=20", "train.log_every=10", "train.eval_every=0",
        "probes.every=5", "train.batch_size=4", "train.seq_len=32"])
    result = Trainer(cfg, progress=False).run()
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    for key in (M.UPDATE_GRAD_COS, M.GRAD_V_RATIO_MAX, M.ACT_ATTN_OUT_RMS, M.ACT_MLP_OUT_RMS):
        for layer in range(cfg.model.n_layers):
            points = client.get_metric_history(result.run_id, M.layer_key(key, layer))
            assert [p.step for p in points] == [0, 5, 10, 15], key
            values = [p.value for p in points]
            if key == M.UPDATE_GRAD_COS:
                assert all(-1.0 <= v <= 1.0 for v in values) and values[-1] > 0
            elif key == M.GRAD_V_RATIO_MAX:
                assert values[0] == 0.0 and all(v > 0 for v in values[1:])
            else:
                assert all(v > 0 for v in values)
