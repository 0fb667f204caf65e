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


def test_breakdown_attributes_gemm_attention_and_rest():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    q = torch.randn(2, 4, 64, 16)
    big = torch.randn(2_000_000)

    def gemm_only(ids, labels):
        for _ in range(4):
            a @ b

    def attention_only(ids, labels):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)

    def elementwise_only(ids, labels):
        for _ in range(5):
            torch.exp(big)

    batches = [torch.zeros(1, 1, dtype=torch.long)] * 3
    parts = {name: bench_throughput.step_breakdown(fn, batches, lambda ids: ids)
             for name, fn in (("gemm", gemm_only), ("attention", attention_only),
                              ("other", elementwise_only))}
    for name, p in parts.items():
        assert abs(p["gemm"] + p["attention"] + p["other"] - p["total"]) < 1e-6
        assert p[name] > 0.5 * p["total"], (name, p)  # the one kind of work dominates its step
    assert parts["gemm"]["attention"] == 0 and parts["attention"]["gemm"] == 0
    assert parts["other"]["gemm"] == 0 and parts["other"]["attention"] == 0


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
    # throughput rows (side, tokens/s, steps/s), then breakdown rows (side + 4 numbers)
    assert [(r[0], len(r)) for r in rows] == [("ours", 3), ("hf", 3), ("ours", 5), ("hf", 5)]
    assert all(float(x) > 0 for r in rows for x in r[1:])
    assert any(line.startswith("ceiling: HF step / ours' GEMM + attention = ") for line in lines)
