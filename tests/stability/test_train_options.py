"""The GPU-path options on CPU: MFU arithmetic, train.compile and train.activation_checkpointing."""

from __future__ import annotations

import pytest
import torch

import stability.trainer as trainer_mod
from stability import hardware
from stability import metric_names as M
from stability.callbacks import OnReadOut
from stability.config import load_config
from stability.train import Trainer, model_loss


def _cfg(tmp_path, *overrides: str):
    return load_config("olmo2-tiny", overrides=[
        "tracking.enabled=false",
        f'train.checkpoint_dir="{tmp_path}/ckpt"',
        "data.max_bytes=300000",
        "train.log_every=1",
        *overrides,
    ])


def _run(cfg) -> tuple[Trainer, list[dict[str, float]]]:
    seen: list[dict[str, float]] = []
    trainer = Trainer(cfg, progress=False, callbacks=[OnReadOut(lambda step, last: seen.append(dict(last)))])
    assert trainer.run().status == "finished"
    return trainer, seen


# ---------------------------------------------------------------- MFU
@pytest.mark.parametrize("name, precision, tf32, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", True, 989e12),
    ("NVIDIA H100 PCIe", "bf16", True, 756e12),
    ("NVIDIA H200", "bf16", True, 989e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", True, 312e12),
    ("NVIDIA A100-PCIE-40GB", "bf16", True, 312e12),
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494e12),  # TF32 tensor cores
    ("NVIDIA H100 80GB HBM3", "fp32", False, 67e12),  # plain FP32
    ("NVIDIA A100-SXM4-80GB", "fp32", True, 156e12),
    ("Tesla T4", "bf16", True, None),
])
def test_peak_flops_table(name, precision, tf32, peak):
    assert hardware.peak_flops(name, precision, tf32) == peak


def test_mfu_formula():
    # 10k tokens/s x 6e9 FLOPs/token = 6e13 FLOP/s on one H100 (989e12): ~6.07 %
    peak = hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16")
    assert hardware.mfu(1e4, 6e9, peak) == pytest.approx(6e13 / 989e12)
    assert hardware.mfu(1e4, 6e9, peak, n_devices=4) == pytest.approx(6e13 / (4 * 989e12))
    assert hardware.device_peak_flops(torch.device("cpu"), "bf16") is None


def test_mfu_logged_only_with_a_known_peak(tmp_path, monkeypatch):
    _, plain = _run(_cfg(tmp_path / "a", "train.steps=2"))
    assert all(M.TRAIN_MFU not in last for last in plain)  # CPU: no peak, no MFU

    monkeypatch.setattr(trainer_mod, "device_peak_flops", lambda device, precision: 1e12)
    trainer, seen = _run(_cfg(tmp_path / "b", "train.steps=2"))
    assert trainer.flops_per_token == trainer.model.flops_per_token(trainer.cfg.train.seq_len)
    for last in seen:
        assert last[M.TRAIN_MFU] == pytest.approx(
            last[M.TRAIN_TOKENS_PER_S] * trainer.flops_per_token / 1e12)


# ---------------------------------------------------------------- train.compile
@pytest.mark.slow  # ~22 s on 2 CPU cores (inductor compiles the blocks)
def test_compile_matches_eager(tmp_path):
    _, eager = _run(_cfg(tmp_path / "eager", "train.steps=3"))
    try:
        trainer, compiled = _run(_cfg(tmp_path / "compiled", "train.steps=3", "train.compile=true"))
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    assert all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None
               for b in trainer.model.blocks)
    assert "blocks.0.attn.qkv_proj.weight" in trainer.model.state_dict()  # names unchanged
    assert len(compiled) == len(eager) == 3
    for a, b in zip(eager, compiled, strict=True):
        assert b[M.TRAIN_LOSS] == pytest.approx(a[M.TRAIN_LOSS], abs=1e-4)


# ---------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_same_losses_and_grads(tmp_path):
    a, plain = _run(_cfg(tmp_path / "a", "train.steps=2"))
    b, ckpt = _run(_cfg(tmp_path / "b", "train.steps=2", "train.activation_checkpointing=true"))
    assert all(block.checkpointing for block in b.model.blocks)
    for x, y in zip(plain, ckpt, strict=True):
        assert y[M.TRAIN_LOSS] == pytest.approx(x[M.TRAIN_LOSS], abs=1e-6)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)

    # gradients of one batch, the same model with and without checkpointing
    batch = a.data.train_batch(0, 4)
    grads = []
    for on in (False, True):
        for block in a.model.blocks:
            block.checkpointing = on
        a.model.zero_grad(set_to_none=True)
        parts, _ = model_loss(a.model, batch.input_ids, batch.labels, 1e-5, batch.doc_ids)
        parts.loss.backward()
        grads.append([p.grad.clone() for p in a.model.parameters()])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-6, rtol=0)
