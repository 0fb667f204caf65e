"""The throughput benchmark: its step breakdown attributes kernels correctly and the CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_throughput  # noqa: E402


def test_kernel_kinds():
    kinds = {name: bench_throughput.kernel_kind(name) for name in (
        "aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_efficient_attention_backward", "aten::_fused_adamw_", "aten::addmv_", "aten::mul",
        "aten::_log_softmax")}
    assert kinds == {
        "aten::mm": "gemm", "aten::addmm": "gemm", "aten::bmm": "gemm",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "aten::_efficient_attention_backward": "attention", "aten::_fused_adamw_": "adamw",
        "aten::addmv_": "other", "aten::mul": "other", "aten::_log_softmax": "other"}


def test_breakdown_attributes_shared_kernels_and_rest():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    q = torch.randn(2, 4, 64, 16)
    big = torch.randn(2_000_000)
    param = torch.nn.Parameter(torch.randn(2_000_000))
    param.grad = torch.randn_like(param)
    opt = torch.optim.AdamW([param], fused=True)
    opt.step()  # state created here, not in the measured steps

    def gemm_only(ids, labels):
        for _ in range(4):
            a @ b

    def attention_only(ids, labels):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)

    def adamw_only(ids, labels):
        opt.step()

    def elementwise_only(ids, labels):
        for _ in range(5):
            torch.exp(big)

    batches = [torch.zeros(1, 1, dtype=torch.long)] * 3
    parts = {name: bench_throughput.step_breakdown(fn, batches, lambda ids: ids)
             for name, fn in (("gemm", gemm_only), ("attention", attention_only),
                              ("adamw", adamw_only), ("other", elementwise_only))}
    kinds = ("gemm", "attention", "adamw", "other")
    for name, p in parts.items():
        assert abs(sum(p[kind] for kind in kinds) - p["total"]) < 1e-6
        assert p[name] > 0, (name, p)  # its kernels are found (how much of the wall time they
        # take depends on how busy the machine is: not asserted)
        assert all(p[kind] == 0 for kind in kinds[:3] if kind != name), (name, p)


def test_cli_prints_ratio_and_breakdown():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_throughput.py"), "--preset",
         "olmo2-tiny", "--batch", "2", "--seq", "16", "--steps", "1", "--rounds", "1",
         "--breakdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("ratio ours/hf: ") for line in lines)
    rows = [line.split() for line in lines if line.startswith(("ours ", "hf "))]
    # throughput rows (side, tokens/s, steps/s), then breakdown rows (side + 5 numbers)
    assert [(r[0], len(r)) for r in rows] == [("ours", 3), ("hf", 3), ("ours", 6), ("hf", 6)]
    assert all(float(x) > 0 for r in rows for x in r[1:])
    assert any(line.startswith("ceiling: HF step / HF's GEMM + attention + AdamW = ")
               for line in lines)
