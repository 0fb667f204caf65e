"""Train-step throughput: ours vs HF transformers' `Olmo2ForCausalLM`, same shape, same weights.

Both sides run a full training step (forward, loss, backward, global-norm clipping, AdamW) on the
same batches in one process, interleaved in rounds so machine noise hits both alike; the table
reports median tokens/s per side and their ratio.

    python benchmarks/bench_throughput.py                       # olmo2-small shape, CPU
    python benchmarks/bench_throughput.py --preset olmo2-tiny --batch 4 --seq 256
    python benchmarks/bench_throughput.py --breakdown   # + where each side's step time goes

`--breakdown` profiles one more round per side (torch.profiler) and splits each step into the
work both sides share (matrix products, attention kernels, torch's fused AdamW kernel) and the
rest (elementwise kernels, the loss, clipping, dispatch, Python). Ours must do the shared work
too, so HF's step over HF's shared time ("ceiling") is the most any rewrite of the rest reaches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from model import build, model_preset
from model.hf_interop import to_hf
from stability.config import OptimConfig
from stability.loss import lm_loss
from stability.optim import AdamW, clip_grad_norm_, param_groups
from stability.train import model_loss


def ours_step_fn(model, cfg: OptimConfig, z_loss: float):
    """The trainer's step: forward, CE + z-loss, backward, clip, our AdamW."""
    params = list(model.parameters())
    opt = AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)

    def step(input_ids, labels):
        parts, _ = model_loss(model, input_ids, labels, z_loss)
        parts.loss.backward()
        clip_grad_norm_(params, cfg.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return parts.loss

    return step


def hf_step_fn(hf, cfg: OptimConfig):
    """The usual HF training step: loss from the model, clip_grad_norm_, torch's fused AdamW
    (`adamw_torch_fused`, the HF Trainer's default optimizer with torch >= 2.8)."""
    params = list(hf.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay, fused=True)

    def step(input_ids, labels):
        out = hf(input_ids=input_ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    return step


def run_steps(step, batches, labels_of) -> float:
    """Seconds to run `step` once per batch."""
    t0 = time.perf_counter()
    for ids in batches:
        step(ids, labels_of(ids))
    return time.perf_counter() - t0


def tokens_per_s(step, batches, labels_of) -> float:
    return sum(b.numel() for b in batches) / run_steps(step, batches, labels_of)


# The work both sides run alike, by kernel. Matrix-vector products (ours' RMSNorm weight
# gradient) are not in it: HF forms that gradient with elementwise products and row sums.
SHARED_KERNELS = {
    "gemm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::_efficient_attention",
                  "aten::_flash_attention"),
    "adamw": ("aten::_fused_adamw", "aten::_fused_adam"),
}


def kernel_kind(name: str) -> str:
    """"gemm", "attention", "adamw" or "other" for a profiler event name (prefix match)."""
    for kind, prefixes in SHARED_KERNELS.items():
        if name.startswith(prefixes):
            return kind
    return "other"


def step_breakdown(step, batches, labels_of) -> dict[str, float]:
    """Milliseconds per step in each shared kind of kernel, the rest (wall minus those) and the
    total, from the self time of the profiled kernels over one pass through `batches`."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = run_steps(step, batches, labels_of)
    ms_per_step = 1e3 / len(batches)
    parts = dict.fromkeys(SHARED_KERNELS, 0.0)
    for event in prof.key_averages():
        kind = kernel_kind(event.key)
        if kind != "other":
            parts[kind] += event.self_cpu_time_total / 1e6 * ms_per_step
    total = wall * ms_per_step
    return {**parts, "other": total - sum(parts.values()), "total": total}


def print_breakdown(parts: dict[str, dict[str, float]]) -> None:
    print("\nwhere a step goes (ms/step, one profiled round per side; profiling adds a little "
          "to 'other'):")
    print(f"{'side':8s} {'GEMM':>8s} {'attention':>10s} {'AdamW':>8s} {'other':>8s} {'total':>8s}")
    for name, p in parts.items():
        print(f"{name:8s} {p['gemm']:8.1f} {p['attention']:10.1f} {p['adamw']:8.1f} "
              f"{p['other']:8.1f} {p['total']:8.1f}")
    hf = parts["hf"]
    ceiling = hf["total"] / sum(hf[kind] for kind in SHARED_KERNELS)
    print(f"ceiling: HF step / HF's GEMM + attention + AdamW = {ceiling:.2f}x (ours/HF if all of "
          "ours' 'other' cost nothing)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="olmo2-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a model key, e.g. --set vocab_size=32768 (repeatable)")
    ap.add_argument("--attn", default="sdpa", help="HF attn_implementation (sdpa | eager)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also profile one round per side: shared kernels vs the rest")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = model_preset(args.preset)
    for item in args.overrides:
        key, value = item.split("=", 1)
        setattr(cfg, key, type(getattr(cfg, key))(value))
    ours = build(cfg, generator=torch.Generator().manual_seed(0))
    hf = to_hf(ours, attn_implementation=args.attn)  # same weights, copied
    ours.train()
    hf.train()
    optim = OptimConfig()
    sides = {"ours": ours_step_fn(ours, optim, 1e-5), "hf": hf_step_fn(hf, optim)}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen)
               for _ in range(args.steps)]
    ours_labels = lambda ids: torch.roll(ids, -1, dims=1)  # noqa: E731 - next token (shifted)
    hf_labels = lambda ids: ids  # noqa: E731 - HF shifts labels itself

    # Same-weights check: the first losses agree (ours adds the small z-loss term).
    with torch.no_grad():
        l_ours = lm_loss(ours(batches[0])[:, :-1], batches[0][:, 1:], 0.0).ce.item()
        l_hf = hf(input_ids=batches[0], labels=batches[0]).loss.item()
    assert abs(l_ours - l_hf) < 1e-4, (l_ours, l_hf)

    for name, step in sides.items():  # warm-up
        tokens_per_s(step, batches[:2], ours_labels if name == "ours" else hf_labels)
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, step in sides.items():
            labels = ours_labels if name == "ours" else hf_labels
            results[name].append(tokens_per_s(step, batches, labels))

    ours_tps, hf_tps = statistics.median(results["ours"]), statistics.median(results["hf"])
    paired = sorted(o / h for o, h in zip(results["ours"], results["hf"]))
    n_params = ours.num_params()
    print(f"shape: {args.preset} ({n_params / 1e6:.2f}M params), batch {args.batch} x seq "
          f"{args.seq}, fp32, {torch.get_num_threads()} threads, HF attn={args.attn}")
    print(f"{'side':8s} {'tokens/s':>10s} {'steps/s':>8s}")
    for name, tps in (("ours", ours_tps), ("hf", hf_tps)):
        print(f"{name:8s} {tps:10.0f} {tps / (args.batch * args.seq):8.2f}")
    print(f"ratio ours/hf: {ours_tps / hf_tps:.2f}x (median of per-round ratios "
          f"{statistics.median(paired):.2f}x, range {paired[0]:.2f}-{paired[-1]:.2f})")
    if args.breakdown:
        print_breakdown({name: step_breakdown(step, batches,
                                              ours_labels if name == "ours" else hf_labels)
                         for name, step in sides.items()})


if __name__ == "__main__":
    main()
