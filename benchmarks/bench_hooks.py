"""Overhead of the HF hook: the HF Trainer without callbacks, with `StabilityCallback` at its
defaults, and with a per-parameter gradient-histogram monitor of the `wandb.watch(log="gradients")`
kind, side by side in one process (rounds alternate; the median steps/s of each is reported).

    python benchmarks/bench_hooks.py                       # a small Llama on CPU
    python benchmarks/bench_hooks.py --hidden 256 --layers 4 --steps 40 --rounds 5
    python benchmarks/bench_hooks.py --clock cpu           # on a machine shared with others

The histogram monitor copies one 64-bin histogram per parameter to the host every
`--watch-every` steps (wandb's default `log_freq` is 1000; 1 shows the per-step cost).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from stability.hooks.hf import StabilityCallback


class Clock(TrainerCallback):
    """Steps/s of the loop in steady state: from the end of the first step to the end of the
    last (setup, the first step and the end of the run are the same once per run for any length)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock, self.ends = clock, []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self.clock())

    @property
    def rate(self) -> float:
        return (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


class GradHistograms(TrainerCallback):
    """A `wandb.watch(log="gradients")`-style monitor: a hook per parameter, a histogram each."""

    def __init__(self, every: int) -> None:
        self.every, self.step, self.handles, self.hists = every, 0, [], {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            self.handles.append(p.register_hook(lambda g, name=name: self._log(name, g)))

    def _log(self, name: str, grad: torch.Tensor) -> None:
        if self.step % self.every == 0:
            self.hists[name] = torch.histc(grad.float(), bins=64).cpu()  # one host copy each

    def on_step_end(self, args, state, control, **kwargs):
        self.step += 1

    def on_train_end(self, args, state, control, **kwargs):
        for h in self.handles:
            h.remove()


def steps_per_s(kind: str, a: argparse.Namespace, store: str, out: str) -> float:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden,
                                         intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                                         num_attention_heads=max(a.hidden // 32, 1),
                                         max_position_embeddings=a.seq))
    ids = torch.randint(0, a.vocab, (a.steps * a.batch, a.seq))
    data = [{"input_ids": r, "labels": r} for r in ids]
    clock = Clock(time.process_time if a.clock == "cpu" else time.perf_counter)
    extra = {"none": [], "stability": [StabilityCallback(tracking_uri=store, output_dir=out)],
             "histograms": [GradHistograms(a.watch_every)]}[kind]
    args = TrainingArguments(output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.batch,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_steps=10, log_level="error")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[clock, *extra]).train()
    return clock.rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--watch-every", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (steadier on a machine others share)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    kinds = ("none", "stability", "histograms")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for r in range(a.rounds):
            for kind in kinds:
                rates[kind].append(steps_per_s(kind, a, store, f"{tmp}/{kind}{r}"))
    base = statistics.median(rates["none"])
    print(f"HF Trainer, Llama d={a.hidden} L={a.layers} V={a.vocab} T={a.seq} B={a.batch}, "
          f"{a.steps} steps x {a.rounds} rounds, {torch.get_num_threads()} threads, {a.clock} clock")
    print(f"{'callbacks':<12} {'steps/s':>8} {'time ratio':>10}")
    for kind in kinds:
        med = statistics.median(rates[kind])
        print(f"{kind:<12} {med:8.2f} {base / med:10.3f}")


if __name__ == "__main__":
    main()
