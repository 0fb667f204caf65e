"""GPU path check: attention kernels, probe overhead and throughput/MFU, in one short table.

    python scripts/gpu_check.py [--quick] [--skip-1b] [--steps N] [--compile]
    python scripts/gpu_check.py --cpu-dry-run   # the same code on CPU at toy sizes (no timings)

(a) our attention kernels (`model.attention_backends`: sdpa, xformers, eager) against the fp32
    eager reference, outputs and q/k/v grads, fp32 (TF32 off, rel <= 1e-5) and bf16 (rel <= 1e-2),
    causal and block-diagonal (packed documents) masks, GQA (8 q heads, 2 kv heads);
(b) `olmo2-190M` training, probes at their defaults vs off: tokens/s, MFU, probe overhead;
(c) `olmo2-1B_v2` at seq 4096, bf16, fused AdamW: probes at defaults vs off (and with `--compile`,
    `train.compile=true` too).

Training rows drive `Trainer.train_step` directly (no eval, no checkpoint). The first steps warm
up (CUDA context, autotuning, compilation) and are not timed; step indices start at 41 so that
the timed window holds probe steps (every 10) and one attention-probe step (step 50).

`--cpu-dry-run` runs every section on the CPU with `olmo2-tiny` shapes and two timed steps: a
check of the script itself (and of the bf16 autocast path), so GPU time is not spent on a bug.
Its numbers mean nothing. tests/gpu runs it on every machine.

Exit status: 0 all passed; 1 a correctness check failed (attention error above tolerance, or a
non-finite training loss); 2 no CUDA device; 3 a section failed to run (its reason is in the table).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import torch  # noqa: E402

NO_CUDA = "gpu_check: needs a CUDA device"
TOL = {"fp32": 1e-5, "bf16": 1e-2}
STEP0 = 41  # first step index (see the module docstring)
DATA = ["data.max_bytes=2000000", "data.tokenizer_vocab=4096"]  # a quick tokenizer; shapes unchanged


# ---------------------------------------------------------------- (a) attention kernels
def _doc_ids(b: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """[b, t] contiguous documents of random lengths (a packed batch)."""
    rows = []
    for _ in range(b):
        cuts = torch.randperm(t - 1, generator=gen)[:5].add(1).sort().values.tolist()
        ids = torch.zeros(t, dtype=torch.long)
        for i, c in enumerate(cuts):
            ids[c:] = i + 1
        rows.append(ids)
    return torch.stack(rows)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().float() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))


def attention_errors(backend: str, dtype: str, docs: bool, *, b: int = 2, t: int = 256, h: int = 8,
                     hkv: int = 2, hd: int = 64, seed: int = 0, device: str = "cuda") -> dict[str, float]:
    """Relative errors of `backend`'s output and q/k/v grads vs the fp32 eager reference (CUDA).

    Inputs are rounded to `dtype` first; the reference sees the rounded values in fp32 with TF32
    off, so the errors are the kernel's own.
    """
    from model.attention_backends import KERNELS, eager_attention

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    q, k, v = (torch.randn(b, t, n, hd, generator=gen).to(dev, dt) for n in (h, hkv, hkv))
    dout = torch.randn(b, t, h, hd, generator=gen).to(dev)
    doc_ids = _doc_ids(b, t, gen).to(dev) if docs else None
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
        ref = eager_attention(*ref_in, doc_ids)
        ref_grads = torch.autograd.grad(ref, ref_in, dout)
        ins = [x.detach().requires_grad_() for x in (q, k, v)]
        out = KERNELS[backend](*ins, doc_ids)
        grads = torch.autograd.grad(out, ins, dout.to(dt))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    errs = {"out": _rel(out, ref)}
    errs.update({f"d{n}": _rel(g, r) for n, g, r in zip("qkv", grads, ref_grads, strict=True)})
    return errs


def check_attention(table: Table, quick: bool, device: str = "cuda") -> None:
    from model.attention_backends import resolve_attention_backend, xformers_available

    on_cuda = device == "cuda"
    backends = ["sdpa", "eager"] + (["xformers"] if on_cuda and xformers_available() else [])
    if "xformers" not in backends:
        why = "xformers.ops does not import" if on_cuda else "CUDA only"
        table.add("attention", "xformers", "SKIP", why)
    auto = resolve_attention_backend("auto", device)
    want = "xformers" if on_cuda and xformers_available() else "sdpa"
    table.add("attention", f"auto on {device}", "ok" if auto == want else "FAIL", f"-> {auto}",
              failed=auto != want)
    t = 128 if quick else 512
    for dtype in ("fp32", "bf16"):
        for docs in (False, True):
            for backend in backends:
                if backend == "eager" and dtype == "fp32":
                    continue  # the reference itself
                case = f"{backend} {dtype} {'docs' if docs else 'causal'}"
                try:
                    errs = attention_errors(backend, dtype, docs, t=t, device=device)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    table.error("attention", case, exc)
                    continue
                worst = max(errs.values())
                bad = not worst <= TOL[dtype]
                detail = " ".join(f"{k} {v:.1e}" for k, v in errs.items()) + f" (tol {TOL[dtype]:g})"
                table.add("attention", case, "FAIL" if bad else "ok", detail, failed=bad)


# ---------------------------------------------------------------- (b, c) training throughput
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(preset: str, steps: int, warmup: int, overrides: list[str], device: str = "cuda"
            ) -> dict[str, float]:
    """tokens/s, MFU and peak memory of `steps` timed train steps after `warmup` untimed ones."""
    from stability import metric_names as M
    from stability.config import load_config
    from stability.hardware import mfu
    from stability.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(preset, overrides=[
            "tracking.enabled=false", f'train.device="{device}"', f'train.checkpoint_dir="{tmp}/ckpt"',
            f"train.log_every={warmup + steps}", "train.eval_every=0", "train.checkpoint_every=0",
            *overrides])
        trainer = Trainer(cfg, progress=False)
        try:
            trainer.model.train()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for s in range(STEP0, STEP0 + warmup):
                trainer.train_step(s)
            _sync(device)
            t0 = time.perf_counter()
            for s in range(STEP0 + warmup, STEP0 + warmup + steps):
                trainer.train_step(s)
            _sync(device)
            elapsed = time.perf_counter() - t0
            event = trainer.read_out(elapsed)
            last, first_bad = event.last, event.first_bad
            tok_s = steps * cfg.train.batch_size * cfg.train.seq_len / elapsed
            return {
                "tok_s": tok_s,
                "mfu": (mfu(tok_s, trainer.flops_per_token, trainer.peak_flops)
                        if trainer.peak_flops else float("nan")),
                "loss": last.get(M.TRAIN_LOSS, float("nan")) if first_bad is None else float("nan"),
                "mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
            }
        finally:
            del trainer
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()


def check_training(table: Table, section: str, preset: str, arms: dict[str, list[str]], steps: int,
                   warmup: int, device: str = "cuda") -> None:
    base = None
    for arm, overrides in arms.items():
        try:
            r = measure(preset, steps, warmup, overrides, device)
        except Exception as exc:  # noqa: BLE001 - OOM, missing kernel, ...: report and go on
            table.error(section, arm, exc)
            continue
        finite = torch.isfinite(torch.tensor(r["loss"])).item()
        if arm == "probes off":
            base = r["tok_s"]
        detail = (f"{r['tok_s']:,.0f} tok/s, MFU {r['mfu']:.1%}, loss {r['loss']:.3f}, "
                  f"peak {r['mem_gb']:.1f} GiB")
        if base is not None and arm != "probes off":
            detail += f", overhead {(base / r['tok_s'] - 1):+.1%} vs probes off"
        table.add(section, arm, "ok" if finite else "FAIL", detail + ("" if finite else " (non-finite)"),
                  failed=not finite)


# ---------------------------------------------------------------- the table
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.failed = False  # a correctness check failed
        self.errored = False  # a section could not run

    def add(self, section: str, case: str, status: str, detail: str, failed: bool = False) -> None:
        self.rows.append((section, case, status, detail))
        self.failed |= failed
        print(f"[gpu_check] {section:9} {case:22} {status:5} {detail}", file=sys.stderr, flush=True)

    def error(self, section: str, case: str, exc: BaseException) -> None:
        traceback.print_exc(file=sys.stderr)
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.add(section, case, "ERROR", reason[:160])
        self.errored = True

    def render(self) -> str:
        widths = [max(len(r[i]) for r in self.rows + [("section", "case", "result", "")])
                  for i in range(3)]
        lines = [f"{'section':{widths[0]}}  {'case':{widths[1]}}  {'result':{widths[2]}}  detail"]
        lines += [f"{s:{widths[0]}}  {c:{widths[1]}}  {st:{widths[2]}}  {d}" for s, c, st, d in self.rows]
        return "\n".join(lines)


def versions(device: str = "cuda") -> str:
    try:
        import xformers

        xf = xformers.__version__
    except Exception:  # noqa: BLE001
        xf = "not installed"
    card = torch.cuda.get_device_name() if device == "cuda" else "none (CPU dry run, toy sizes)"
    return (f"card: {card} | torch {torch.__version__} (CUDA {torch.version.cuda}) "
            f"| xformers {xf}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter sequences, smaller batches, fewer steps")
    ap.add_argument("--skip-1b", action="store_true", help="skip section (c), the ~1B model")
    ap.add_argument("--steps", type=int, default=0, help="timed training steps (default 30, quick 10)")
    ap.add_argument("--compile", action="store_true", help="also time the 1B model with train.compile")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every section on the CPU at toy sizes (checks the script, no timings)")
    args = ap.parse_args(argv)
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    steps = 2 if dry else args.steps or (10 if args.quick else 30)
    warmup = 1 if dry else 2 if args.quick else 3
    table = Table()
    header = versions(device)
    print(f"[gpu_check] {header}", file=sys.stderr, flush=True)

    check_attention(table, args.quick or dry, device)
    data = ["data.max_bytes=300000"] if dry else DATA
    off, on = ["probes.enabled=false", *data], data
    p150, p1b = ("olmo2-tiny", "olmo2-tiny") if dry else ("olmo2-190M", "olmo2-1B_v2")
    b150 = ["train.batch_size=8", "train.seq_len=1024"] if args.quick else []
    b150 = ["train.batch_size=2", "train.seq_len=64"] if dry else b150
    check_training(table, "190M", p150, {"probes off": off + b150, "probes on": on + b150},
                   steps, warmup, device)
    if not args.skip_1b:
        shape = [f"train.seq_len={64 if dry else 4096}", 'train.precision="bf16"',
                 f"train.batch_size={2 if args.quick or dry else 4}"]
        arms = {"probes off": off + shape, "probes defaults": on + shape}
        if args.compile:
            arms["compile, probes off"] = off + shape + ["train.compile=true"]
            arms["compile, probes defaults"] = on + shape + ["train.compile=true"]
        check_training(table, "1B_v2 s4096", p1b, arms, steps, warmup, device)

    print(header)
    print(table.render())
    if table.failed:
        print("gpu_check: FAILED (a correctness check is out of tolerance)")
        return 1
    if table.errored:
        print("gpu_check: INCOMPLETE (a section raised; see ERROR rows)")
        return 3
    print("gpu_check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
