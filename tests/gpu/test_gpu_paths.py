"""The CUDA path: xformers against sdpa, a bf16 run with MFU, `auto` -> xformers (skipped without
CUDA), and `scripts/gpu_check.py`'s refusal on a machine without CUDA (runs anywhere)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.attention_backends import resolve_attention_backend, xformers_available
from stability import metric_names as M
from stability.callbacks import OnReadOut
from stability.config import load_config
from stability.train import Trainer
from tests.conftest import requires_cuda

ROOT = Path(__file__).resolve().parents[2]
needs_xformers = pytest.mark.skipif(not xformers_available(), reason="xformers.ops does not import")


@requires_cuda
@needs_xformers
@pytest.mark.parametrize("docs", [False, True], ids=["causal", "docs"])
@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_xformers_matches_sdpa(dtype, tol, docs):
    from scripts.gpu_check import attention_errors

    for backend in ("sdpa", "xformers"):  # both against the fp32 eager reference
        errs = attention_errors(backend, dtype, docs, t=256)
        assert max(errs.values()) <= tol, (backend, errs)
    # and against each other, directly
    from model.attention_backends import sdpa_attention, xformers_attention

    gen = torch.Generator().manual_seed(1)
    dt = torch.float32 if dtype == "fp32" else torch.bfloat16
    q, k, v = (torch.randn(2, 256, n, 64, generator=gen).cuda().to(dt) for n in (8, 2, 2))
    doc_ids = torch.arange(256).div(60, rounding_mode="floor").expand(2, -1).cuda() if docs else None
    a, b = sdpa_attention(q, k, v, doc_ids).float(), xformers_attention(q, k, v, doc_ids).float()
    assert float((a - b).norm() / a.norm()) <= tol


@requires_cuda
def test_bf16_tiny_run_logs_mfu(tmp_path):
    cfg = load_config("olmo2-tiny", overrides=[
        "tracking.enabled=false", f'train.checkpoint_dir="{tmp_path}/ckpt"', "data.max_bytes=300000",
        'train.device="cuda"', 'train.precision="bf16"', "train.steps=5", "train.log_every=5"])
    trainer = Trainer(cfg, progress=False)
    seen = []
    trainer.callbacks.append(OnReadOut(lambda step, last: seen.append(dict(last))))
    result = trainer.run()
    assert result.status == "finished" and math.isfinite(result.final_loss)
    if trainer.peak_flops is None:
        pytest.skip(f"no peak FLOP/s known for {torch.cuda.get_device_name()}: MFU not reported")
    assert 0.0 < seen[-1][M.TRAIN_MFU] < 1.0


@requires_cuda
@needs_xformers
def test_auto_resolves_to_xformers_on_cuda():
    assert resolve_attention_backend("auto", "cuda") == "xformers"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "gpu_check: needs a CUDA device"
    assert proc.stdout == ""


def test_gpu_check_cpu_dry_run_exercises_every_section():
    """The script's own code (attention check, Trainer-driven timing, table) on CPU at toy sizes,
    so a GPU session is not spent finding a bug in it; runs anywhere (~5 s)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.splitlines()[0].startswith("card: none (CPU dry run")
    for row in ("auto on cpu", "sdpa fp32 docs", "eager bf16 causal", "probes on", "probes defaults"):
        assert row in out, (row, out)
    assert "ERROR" not in out and "FAIL" not in out and out.rstrip().endswith("gpu_check: all passed")
