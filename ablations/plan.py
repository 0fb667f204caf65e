"""The plan of a grid before it runs: per-cell budget, model size and compute, and a CPU-time estimate.

Compute per cell = tokens x training FLOPs per token (`model.size`: 6 N + 6 L d T, in closed form:
no model is built, torch is not imported).

CPU time uses `CPU_FLOPS`, a calibration of this 2-core machine: a bare forward/backward/AdamW loop
on `olmo2-small` (batch 8 x seq 128, fp32, 2 threads) ran 10.8-11.2 steps/s at 7.09 MFLOP/token x
1024 tokens/step = 78-81 GFLOP/s (measured while other jobs shared the cores); we use 80e9. The
trainer's probes, evals and data loading come on top, so read it as a lower bound, and only for
small CPU models; GPU studies should be read in tokens and PFLOPs.
"""

from __future__ import annotations

from ablations.spec import GridSpec
from model.size import flops_per_token, param_count

__all__ = ["CPU_FLOPS", "plan_rows", "plan_totals", "format_plan"]

CPU_FLOPS = 80e9  # sustained training FLOP/s on this 2-core machine (see the module docstring)


def plan_rows(spec: GridSpec) -> list[dict]:
    """One dict per cell: arm, seed, lr, cell_id, steps, tokens, params, est_flops."""
    rows = []
    for cell in spec.cells():
        cfg = cell.config
        params, fpt = param_count(cfg.model), flops_per_token(cfg.model, cfg.train.seq_len)
        tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
        rows.append({
            "arm": cell.arm,
            "seed": cell.seed,
            "lr": cell.lr,
            "cell_id": cell.cell_id,
            "steps": cfg.train.steps,
            "tokens": tokens,
            "params": params,
            "est_flops": tokens * fpt,
        })
    return rows


def plan_totals(rows: list[dict], cpu_flops: float = CPU_FLOPS) -> dict:
    """cells, tokens, flops, pflops and the estimated sequential CPU seconds."""
    flops = float(sum(r["est_flops"] for r in rows))
    return {
        "cells": len(rows),
        "tokens": int(sum(r["tokens"] for r in rows)),
        "flops": flops,
        "pflops": flops / 1e15,
        "cpu_seconds": flops / cpu_flops,
    }


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(spec: GridSpec, cpu_flops: float = CPU_FLOPS) -> str:
    """A table of the cells and a totals line (cells, tokens, PFLOPs, sequential CPU time)."""
    rows = plan_rows(spec)
    header = ("arm", "seed", "lr", "cell", "steps", "tokens", "params", "FLOPs")
    table = [header] + [
        (r["arm"] + (" *" if r["arm"] == spec.baseline else ""), str(r["seed"]), f"{r['lr']:g}",
         r["cell_id"], str(r["steps"]), _si(r["tokens"]), _si(r["params"]), _si(r["est_flops"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = {0, 3}
    lines = [f"grid {spec.name!r}" + (f": {spec.description}" if spec.description else "")
             + (f" (preset {spec.preset})" if spec.preset else "")]
    for row in table:
        lines.append("  ".join(c.ljust(w) if i in left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    t = plan_totals(rows, cpu_flops)
    n_lrs = len(spec.lrs) if spec.lrs else 1
    lines.append(
        f"total: {t['cells']} cells ({len(spec.arms)} arms x {len(spec.seeds)} seeds x "
        f"{n_lrs} lr{'s' if n_lrs != 1 else ''}), {_si(t['tokens'])} tokens, {t['pflops']:.3g} PFLOPs, "
        f"~{_duration(t['cpu_seconds'])} of CPU time run one after another "
        f"(at {cpu_flops / 1e9:.0f} GFLOP/s; * = baseline)"
    )
    if spec.resources or spec.ranks > 1:
        lines.append(f"per cell: {_resources(spec)}")
    return "\n".join(lines)


def _resources(spec: GridSpec) -> str:
    """`[resources]` in words, with the data-parallel ranks a cell runs (torchrun when > 1)."""
    r = spec.resources
    parts = [f"{spec.ranks} rank{'s' if spec.ranks > 1 else ''}"
             + (" (torchrun, FSDP2; train.batch_size is the global batch)" if spec.ranks > 1 else "")]
    units = {"cpus": ("CPU thread", "CPU threads"), "gpus": ("GPU", "GPUs"),
             "mem_gb": ("GB memory", "GB memory"), "time_min": ("min limit", "min limit")}
    parts += [f"{r[key]:g} {units[key][r[key] != 1]}" for key in units if key in r]
    return ", ".join(parts)
