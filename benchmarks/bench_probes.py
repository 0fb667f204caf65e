"""Probe overhead: the trainer's steps (with read-outs) with probes on vs off, in one process.

Two trainers of the same config, one with `probes.enabled=false`, alternate rounds of steps;
the table reports median tokens/s of each and the overhead of the probes at their defaults
(per-layer grad norms every step, the rest every `probes.every`, attention every
`probes.attn_every`, spike detectors at each read-out).

    python benchmarks/bench_probes.py                      # olmo2-small, CPU
    python benchmarks/bench_probes.py --preset olmo2-190M --set train.batch_size=2
"""

from __future__ import annotations

import argparse
import statistics
import time

from stability.config import load_config
from stability.train import Trainer


def run_steps(trainer: Trainer, start: int, n: int) -> float:
    """Tokens/s of `n` training steps from `start`, read-outs included (tracking off)."""
    cfg = trainer.cfg.train
    t0 = time.perf_counter()
    for step in range(start, start + n):
        trainer.train_step(step)
        trainer.step = step + 1
        if trainer.buffer.rows == cfg.log_every:
            trainer.read_out(time.perf_counter() - t0)
    return n * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="olmo2-small")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=50, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    base = ["tracking.enabled=false", *args.overrides]
    sides = {
        "probes on": Trainer(load_config(args.preset, overrides=base), progress=False),
        "probes off": Trainer(load_config(args.preset, overrides=[*base, "probes.enabled=false"]),
                              progress=False),
    }
    for trainer in sides.values():  # warm-up
        run_steps(trainer, 0, 10)
    results: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, trainer in sides.items():
            results[name].append(run_steps(trainer, 10 + r * args.steps, args.steps))
    cfg = sides["probes on"].cfg
    print(f"shape: {args.preset}, batch {cfg.train.batch_size} x seq {cfg.train.seq_len}, "
          f"probes.every {cfg.probes.every}, attn_every {cfg.probes.attn_every}, "
          f"log_every {cfg.train.log_every}")
    print(f"{'side':12s} {'tokens/s':>10s}")
    med = {name: statistics.median(v) for name, v in results.items()}
    for name, tps in med.items():
        print(f"{name:12s} {tps:10.0f}")
    paired = sorted(off / on for on, off in zip(results["probes on"], results["probes off"]))
    print(f"probe overhead: {100 * (med['probes off'] / med['probes on'] - 1):.1f}% "
          f"(median of paired rounds {100 * (statistics.median(paired) - 1):.1f}%)")


if __name__ == "__main__":
    main()
