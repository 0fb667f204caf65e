"""Growth exponent lambda at init: against a hand computation, a constructed case, the table."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import model as model_lib
from stability.config import load_config
from stability.data import build_data
from stability.loss import lm_loss
from stability.probes.growth import (
    COLUMNS,
    format_growth_table,
    growth_exponents,
    growth_table,
    width_config,
)
from stability.seeding import derive_seeds, init_generator


@pytest.fixture(scope="module")
def cfg():
    return load_config("olmo2-tiny", overrides=["data.max_bytes=200000", "tracking.enabled=false"])


@pytest.fixture(scope="module")
def batch(cfg):
    data = build_data(cfg.data, vocab_size=cfg.model.vocab_size, seq_len=cfg.train.seq_len,
                      seed=derive_seeds(0)["data"])
    return data.val_batches(4, 1)[0]


def _model(cfg, init: str = "normal", seed: int = 0, dtype=torch.float32):
    return model_lib.build(width_config(cfg.model, cfg.model.d_model, init),
                           generator=init_generator(seed)).to(dtype)


def _by_hand(model, batch, reduce: str) -> tuple[float, float]:
    """Second method: forward hooks + retain_grad, unfused logits + lm_loss, loss.backward()."""
    captured = {}

    def hook(name):
        def fn(_module, _args, output):
            output.retain_grad()
            captured[name] = output
        return fn

    handles = [model.blocks[0].register_forward_hook(hook("first")),
               model.blocks[-1].register_forward_hook(hook("last"))]
    try:
        logits = model(batch.input_ids)
        lm_loss(logits, batch.labels, 0.0).loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    d = model.cfg.d_model

    def vec(t: torch.Tensor) -> torch.Tensor:
        x = t.reshape(-1, d).double()
        return x.mean(0) if reduce == "mean" else x.square().mean(0).sqrt()

    n = len(model.blocks)
    act = math.log(vec(captured["last"].detach()).norm() / vec(captured["first"].detach()).norm()) / n
    grad = math.log(vec(captured["last"].grad).norm() / vec(captured["first"].grad).norm()) / n
    return act, grad


@pytest.mark.parametrize("reduce", ["mean", "rms"])
@pytest.mark.parametrize("init", ["normal", "mitchell"])
def test_matches_hand_computation(cfg, batch, init, reduce):
    model = _model(cfg, init, dtype=torch.float64)
    got = growth_exponents(model, batch.input_ids, batch.labels, reduce=reduce)
    act, grad = _by_hand(model, batch, reduce)
    assert got["act"] == pytest.approx(act, abs=1e-6)
    assert got["grad"] == pytest.approx(grad, abs=1e-6)
    # fp32 (the trainer's CPU precision) agrees with the fp64 result to fp32 accuracy
    got32 = growth_exponents(_model(cfg, init), batch.input_ids, batch.labels, reduce=reduce)
    assert got32["act"] == pytest.approx(got["act"], abs=1e-4)
    assert got32["grad"] == pytest.approx(got["grad"], abs=1e-4)


@pytest.mark.parametrize("reduce", ["mean", "rms"])
def test_scaling_last_block_gives_log_c_over_depth(cfg, batch, monkeypatch, reduce):
    model = _model(cfg)
    n, c = len(model.blocks), 7.5
    for block in model.blocks[1:-1]:
        monkeypatch.setattr(block, "forward", lambda x, doc_ids=None: x)
    monkeypatch.setattr(model.blocks[-1], "forward", lambda x, doc_ids=None: c * x)
    got = growth_exponents(model, batch.input_ids, batch.labels, reduce=reduce)
    assert got["act"] == pytest.approx(math.log(c) / n, abs=1e-6)
    assert got["grad"] == pytest.approx(-math.log(c) / n, abs=1e-6)  # dL/dh1 = c dL/dhL
    assert got["act_norm_last"] == pytest.approx(c * got["act_norm_first"], rel=1e-6)


def test_identity_blocks_by_weights_give_zero(cfg, batch):
    """Zero output projections make every reordered-norm block after the first the identity."""
    model = _model(cfg)
    with torch.no_grad():
        for block in model.blocks[1:]:
            block.attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    got = growth_exponents(model, batch.input_ids, batch.labels)
    assert got["act"] == pytest.approx(0.0, abs=1e-7)
    assert got["grad"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode", [True, False])
def test_no_param_grads_and_mode_restored(cfg, batch, mode):
    model = _model(cfg)
    model.train(mode)
    got = growth_exponents(model, batch.input_ids, batch.labels, z_coef=1e-4,
                           doc_ids=batch.doc_ids)
    assert math.isfinite(got["act"]) and math.isfinite(got["grad"])
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training == mode for m in model.modules())
    with pytest.raises(ValueError, match="reduce"):
        growth_exponents(model, batch.input_ids, batch.labels, reduce="median")
    assert all(m.training == mode for m in model.modules())


def test_growth_table_shape_and_determinism(cfg):
    df = growth_table(cfg, [64, 96], ["normal", "mitchell"], batch_size=4, batches=2)
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert set(df["init"]) == {"normal", "mitchell"} and set(df["d_model"]) == {64, 96}
    assert df[COLUMNS[3:]].map(math.isfinite).all().all()
    assert (df[COLUMNS[5:]] > 0).all().all()
    again = growth_table(cfg, [64, 96], ["normal", "mitchell"], batch_size=4, batches=2)
    pd.testing.assert_frame_equal(df, again)
    text = format_growth_table(df)
    assert "mitchell:lambda_grad" in text and len(text.splitlines()) == 4


def test_print_width_comparison(cfg):
    """The report's width plot without training (printed for the record, not asserted)."""
    df = growth_table(cfg, [64, 128, 256], ["normal", "mitchell"])
    print("\nolmo2-tiny, growth exponents at init (reduce=mean)\n" + format_growth_table(df))
    print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    assert len(df) == 6


def test_two_layer_hand_built_case(cfg, batch):
    """A 2-layer model whose second block doubles its input: lambda_act = log(2) / 2 exactly,
    lambda_grad = -log(2) / 2 (the loss gradient at block 1 is twice the one at block 2)."""
    import copy

    two = copy.deepcopy(cfg)
    two.model.n_layers = 2
    model = _model(two)
    model.blocks[1].forward = lambda x, doc_ids=None: 2.0 * x
    got = growth_exponents(model, batch.input_ids, batch.labels)
    assert got["act"] == pytest.approx(math.log(2.0) / 2, abs=1e-6)
    assert got["grad"] == pytest.approx(-math.log(2.0) / 2, abs=1e-6)
