"""The trainer: the loop (step, read-out, eval cadence, checkpoints) and the callbacks it calls.

The hot loop keeps every per-step scalar on device in a `[log_every, K]` buffer and copies it to
the host once per read-out (`train.log_every`): no `.item()` per step. A non-finite loss or grad
norm is found at the read-out and ends the run with status `diverged` at the exact step.

Read-outs fall on the multiples of `log_every` (and at checkpoints and the last step), so a run
resumed from any step reads out where the uninterrupted one did. A stop signal (SIGTERM, SIGINT,
a pre-timeout signal: stability.stop) ends the run after the current step: its rows are read out
(the per-read-out series wait for the next regular read-out), a checkpoint is written whatever
`checkpoint_every` says and the run ends with status `interrupted`.

Everything else (tracking, dense series, spikes.csv, evals, growth at init, the progress bar, a
grid's progress file) is a callback (`stability.callbacks`). One process is a world of size 1
(`stability.distributed.SingleProcess`): the step has one code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import model as model_lib
from model.config import ConfigError
from model.size import flops_per_token
from stability import metric_names as M
from stability import store
from stability.callbacks import Callback, Callbacks, ReadOutEvent
from stability.callbacks.defaults import default_callbacks
from stability.checkpoint import save_checkpoint
from stability.compile import apply_train_options, eager
from stability.config import RunConfig, config_hash, resume_conflicts
from stability.data import Batch, build_data
from stability.dist_checkpoint import find_latest, save_sharded
from stability.distributed import data_parallel, resolve_device, shard_model
from stability.hardware import device_peak_flops, mfu
from stability.loss import LossParts, fused_lm_loss
from stability.optim import AdamW, SkipStep, clip_grad_norm_, param_groups
from stability.probes.session import ProbeSession
from stability.rewind import Rewind, Rewinder
from stability.schedule import lr_at
from stability.seeding import derive_seeds, init_generator
from stability.spikes import REWOUND
from stability.stop import ALWAYS, StopRequest, handling

# Read-out series that are the read-out's, not a step's (logged at its last step).
SUMMARY_KEYS = (M.TRAIN_TOKENS_PER_S, M.TRAIN_MFU, M.TRAIN_TOKENS, M.TRAIN_LR, M.TRAIN_MASKED_TOKENS)


@dataclass
class RunResult:
    """What a run ended with."""

    status: str  # finished | diverged | interrupted
    steps: int  # optimizer steps taken (including the diverging one)
    final_loss: float | None
    eval_loss: float | None
    diverged_at_step: int | None
    run_id: str | None
    checkpoint_dir: str
    stop_signal: str | None = None  # interrupted: the signal's name, e.g. SIGTERM


def model_loss(model: model_lib.Transformer, input_ids: torch.Tensor, labels: torch.Tensor,
               z_coef: float, doc_ids: torch.Tensor | None = None, probe: bool = False
               ) -> tuple[LossParts, list[torch.Tensor] | None]:
    """The training loss of `model` on a batch: trunk, then the fused LM head + CE + z-loss.

    With `probe`, also the residual stream after each block and the output-logit statistics.
    """
    if probe:
        out, hidden = model.features(input_ids, doc_ids, return_hidden=True)
    else:
        out, hidden = model.features(input_ids, doc_ids), None
    return fused_lm_loss(out, model.lm_head.weight, labels, z_coef, stats=probe), hidden


def safe_name(name: str) -> str:
    """A run name as a folder name: anything but letters, digits, `.`, `_`, `-` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "run"


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.preset or 'custom'}-s{cfg.train.seed}-{config_hash(cfg)[:8]}"


class StepBuffer:
    """The per-step device rows since the last read-out: [log_every, K], filled without a sync."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        self.data = torch.zeros(rows, width, device=device)
        self.start = 0  # step of the first row
        self.rows = 0

    def append(self, row: torch.Tensor) -> None:
        self.data[self.rows].copy_(row)
        self.rows += 1

    def take(self) -> tuple[torch.Tensor, int]:
        """(the filled rows, the step of the first); the buffer then starts after them."""
        filled, start = self.data[: self.rows], self.start
        self.start, self.rows = self.start + self.rows, 0
        return filled, start


class Trainer:
    """Builds a run from its `RunConfig` and trains (or resumes) it to the end."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, progress: bool = True,
                 stop_signals: Sequence[int] = ALWAYS, callbacks: Sequence[Callback] = ()) -> None:
        cfg.validate()
        self.cfg, self.resume = cfg, resume
        self.stop_signals = tuple(stop_signals)  # end the run cleanly after the current step
        self.stop = StopRequest()
        self.world, self.device = data_parallel(cfg, resolve_device(cfg.train.device))
        self.rank0 = self.world.is_rank0  # tracking, artifacts, progress bar
        model_lib.check_attention_backend(cfg.model.attention, self.device.type)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.run_name = cfg.tracking.run_name or default_run_name(cfg)
        self.ckpt_dir = Path(cfg.train.checkpoint_dir or Path("runs") / safe_name(self.run_name))
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.peak_flops = device_peak_flops(self.device, precision)  # None: no MFU (CPU, unknown)
        self.flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)
        self.callbacks = Callbacks([*default_callbacks(cfg, self.rank0, progress), *callbacks])

        with self.world.rank0_first():  # disk caches
            self.data = build_data(cfg.data, vocab_size=cfg.model.vocab_size, seq_len=cfg.train.seq_len,
                                   seed=derive_seeds(cfg.train.seed)["data"],
                                   progress=progress and self.rank0)
        self.model = model_lib.build(cfg.model, generator=init_generator(cfg.train.seed))
        self.model.to(self.device)
        self.callbacks.call("on_setup", self)  # the plain model, before sharding and compiling
        if self.world.world_size > 1:
            shard_model(self.model, cfg)
        apply_train_options(self.model, cfg.train.compile, cfg.train.activation_checkpointing)
        self.probes = ProbeSession(self.model, cfg.probes, self.world)
        o = cfg.optim
        self.optimizer = AdamW(param_groups(self.model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.skip = SkipStep.from_config(o, self.device) if o.skip_step else None
        self.rewinder: Rewinder | None = None
        if cfg.train.on_spike == "rewind":
            if self.world.world_size > 1:
                raise ConfigError("train.on_spike: 'rewind' runs in one process only for now "
                                  "(allowed with several ranks: log)")
            self.rewinder = Rewinder(cfg.rewind, cfg.train.log_every)
        self.data_offset = 0  # batch index - step: rewinds skip data
        self.buffer = StepBuffer(cfg.train.log_every, self.probes.step_spec.width, self.device)
        self.step = 0
        self.tokens_seen = 0
        self.masked = 0  # labels masked by the n-gram filter since the last regular read-out
        self.run_id: str | None = None  # the MLflow run, once tracking started (or restored)
        self.eval_loss: float | None = None
        self.last: dict[str, float] = {}  # the last clean read-out's values

    # ------------------------------------------------------------------ what callbacks produce
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.callbacks.call("on_metrics", self, step, values)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.callbacks.call("on_text", self, text, artifact_file)

    def log_dense_parts(self, directory: Path) -> None:
        self.callbacks.call("on_dense_parts", self, directory)

    # ------------------------------------------------------------------ one optimizer step
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def doc_ids(self, batch: Batch) -> torch.Tensor | None:
        return batch.doc_ids if self.cfg.data.doc_mask else None

    def forward_loss(self, batch: Batch, probe: bool = False
                     ) -> tuple[LossParts, list[torch.Tensor] | None]:
        with self.autocast():
            return model_loss(self.model, batch.input_ids, batch.labels, self.cfg.loss.z_loss,
                              self.doc_ids(batch), probe)

    def train_step(self, step: int) -> None:
        """Forward, loss, backward, clip, (skip-)step at `step`; scalars stay on device.

        Data parallel: this rank's rows; loss, norms and clipping become the global batch's in
        one all-reduce (`world.step_sync`; a single process's is the identity)."""
        cfg = self.cfg
        batch = self.data.train_batch(step + self.data_offset, cfg.train.batch_size)
        lr = lr_at(step, peak=cfg.optim.lr, total=cfg.train.steps, warmup=cfg.schedule.warmup_steps,
                   kind=cfg.schedule.kind, alpha_f=cfg.schedule.alpha_f)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        probe = self.probes.is_probe_step(step)
        self.probes.arm(step)
        local = self.world.local_batch(batch)
        parts, hidden = self.forward_loss(local.to(self.device), probe)
        sync = self.world.step_sync(parts, local, batch)
        sync.loss.backward()
        grad_norm, clip_coef, tensor_norms = clip_grad_norm_(self.probes.params, cfg.optim.clip_grad_norm,
                                                             sync.reduce_sq)
        parts, batch = sync.global_parts(), batch.to(self.device)
        factor = None
        if self.skip is not None:  # OLMo-core feeds the grad norm only when it clips
            factor = self.skip(parts.ce, grad_norm if cfg.optim.clip_grad_norm > 0 else None)
        skipped = 1.0 - factor if factor is not None else torch.zeros((), device=self.device)
        self.buffer.append(self.probes.step_row(parts, grad_norm, clip_coef, skipped, tensor_norms))
        self.probes.before_update(step, self.optimizer)
        self.optimizer.step(factor)
        with eager(cfg.train.compile):  # the probes read the gradients too: zero them after
            self.probes.after_step(step, parts, hidden, self.optimizer, self.model, batch.input_ids,
                                   self.doc_ids(batch))
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += batch.input_ids.numel()
        self.masked += batch.n_masked  # host-side count from the loader: no sync

    # ------------------------------------------------------------------ read-out and eval
    def read_out(self, elapsed: float, regular: bool = True) -> ReadOutEvent:
        """One host copy of the step buffer and probe rows, named; the read-out's own series.

        Not `regular` (a stop between read-outs): the masked-label count goes on (into the
        checkpoint), so a resumed run logs the summary at the step the uninterrupted one does.
        """
        rows, start = self.buffer.take()
        n_steps = rows.shape[0]
        found = self.probes.read_out(rows, start)
        summary = {M.TRAIN_TOKENS_PER_S: n_steps * self.cfg.train.batch_size * self.cfg.train.seq_len
                   / max(elapsed, 1e-9)}
        if self.peak_flops:  # tokens/s is the global batch's: the peak is every rank's
            summary[M.TRAIN_MFU] = mfu(summary[M.TRAIN_TOKENS_PER_S], self.flops_per_token,
                                       self.peak_flops, self.world.world_size)
        summary[M.TRAIN_TOKENS] = float(self.tokens_seen)
        summary[M.TRAIN_LR] = self.optimizer.param_groups[0]["lr"]
        summary[M.TRAIN_MASKED_TOKENS] = float(self.masked)
        if regular:
            self.masked = 0
        if self.probes.monitor is not None:
            summary.update(self.probes.monitor.scores())
        if self.rewinder is not None:
            summary[M.TRAIN_REWINDS] = float(len(self.rewinder.rewinds))
        last = {**(found.steps[-1][1] if found.steps else {}), **summary}
        return ReadOutEvent(start + n_steps - 1, found.steps, found.probes, found.dense, summary, last,
                            regular, found.first_bad, found.events)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted held-out cross-entropy over `train.eval_batches` fixed batches."""
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for batch in self.data.val_batches(self.cfg.train.batch_size, self.cfg.train.eval_batches):
            batch = self.world.local_batch(batch).to(self.device)
            n = int((batch.labels != -100).sum())
            total += self.forward_loss(batch)[0].ce * n
            count += n
        total, count = self.world.eval_sums(total, count)
        self.model.train()
        return float(total) / max(count, 1)

    # ------------------------------------------------------------------ checkpoints
    def state(self, weights: bool = True) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "masked_since_read_out": self.masked,  # nonzero after a stop between read-outs
            **({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
               if weights else {}),
            "skip_step": self.skip.state_dict() if self.skip else None,
            "spikes": self.probes.state_dict(),
            "data_offset": self.data_offset,
            "rewinds": self.rewinder.state_dict() if self.rewinder else [],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "run_id": self.run_id,
            "config": self.cfg.to_dict(),
        }

    def save(self) -> None:
        """Flush what the checkpoint should see (callbacks), then write it (sharded: every rank)."""
        self.callbacks.call("on_checkpoint", self, self.step)
        keep = self.cfg.train.keep_checkpoints
        if self.world.world_size == 1:
            save_checkpoint(self.ckpt_dir, self.step, self.state(), keep=keep)
        else:
            save_sharded(self.ckpt_dir, self.step, self.model, self.optimizer, self.state(False), keep)

    def restore(self) -> bool:
        """Load the newest good checkpoint (.pt or sharded, any number of ranks); False if none."""
        found = find_latest(self.ckpt_dir, map_location=self.device)
        if found is None:
            return False
        state = found.state
        changed = resume_conflicts(state["config"], self.cfg)
        if changed:
            raise ConfigError(f"--resume: checkpoint in {self.ckpt_dir} was made with other values "
                              f"for {', '.join(changed)}")
        found.load_weights(self.model, self.optimizer)
        self.load_progress(state)
        if self.rewinder is not None:
            self.rewinder.load_state_dict(state.get("rewinds", []))
        self.run_id = state["run_id"]
        return True

    def load_progress(self, state: dict[str, Any]) -> None:
        """Everything of a checkpoint or snapshot but the weights, the run id and the rewinds."""
        if self.skip is not None and state["skip_step"] is not None:
            self.skip.load_state_dict(state["skip_step"])
        self.probes.load_state_dict(state.get("spikes"))
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step = self.buffer.start = int(state["step"])
        self.buffer.rows = 0
        self.tokens_seen = int(state["tokens_seen"])
        self.masked = int(state.get("masked_since_read_out", 0))
        self.data_offset = int(state.get("data_offset", 0))

    # ------------------------------------------------------------------ rewind and skip
    def snapshot(self, commit: bool = False) -> None:
        """Keep the state before `self.step` in the rewind ring (`commit`: as its only entry, at
        the start and after a checkpoint, which a rewind never crosses)."""
        if self.rewinder is None:
            return
        if commit:
            self.rewinder.ring.reset(self.step, self.state())
        elif self.rewinder.due(self.step):
            self.rewinder.ring.push(self.step, self.state())

    def rewind(self, event: ReadOutEvent) -> Rewind | None:
        """Go back if `event` found a loss spike or a non-finite loss and rewinds are left: load
        the snapshot, skip `rewind.skip_batches` batches, record it. None: nothing to do."""
        assert self.rewinder is not None
        loss_at = {step: row.get(M.TRAIN_CE_LOSS, math.nan) for step, row in event.rows}
        found = self.rewinder.trigger(event.events, event.first_bad, loss_at)
        if found is None:
            return None
        spike_step, reason, value, spikes = found
        snap = self.rewinder.ring.target(spike_step, self.cfg.rewind.before)
        state = snap.state
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_progress(state)
        self.data_offset += self.cfg.rewind.skip_batches
        self.rewinder.ring.drop_after(snap.step)
        if self.probes.monitor is not None:  # the spikes that set it off stay on record
            self.probes.monitor.events.extend(dataclasses.replace(e, action=REWOUND) for e in spikes)
        done = self.rewinder.record(spike_step, reason, value, event.step, snap.step, self.data_offset)
        again = (f" (the spike's batch comes again: rewind.skip_batches <= the {spike_step - snap.step} "
                 f"steps gone back)" if done.skipped_batches <= spike_step - snap.step else "")
        print(f"rewind {done.rewind}/{self.cfg.rewind.max_rewinds}: {reason} at step {spike_step}; "
              f"back to step {snap.step}, skipping {done.skipped_batches} batches{again}", file=sys.stderr)
        self.callbacks.call("on_rewind", self, done)
        return done

    @property
    def cell(self) -> str:
        """The config's content hash: a grid cell's id, and what a run adopted by name must match."""
        return config_hash(self.cfg)[:12]

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunResult:
        """Train to `train.steps` (from the last checkpoint with `resume`); never raises on NaN.

        One of `stop_signals` ends it after the current step, checkpointed, status `interrupted`.
        """
        with handling(self.stop_signals, self.stop.handle):
            return self._run()

    def _run(self) -> RunResult:
        cfg = self.cfg.train
        restored = self.resume and self.restore()
        try:
            self.callbacks.call("on_train_start", self)
            if self.resume and not restored:
                adopted = f" in MLflow run {self.run_id}" if self.run_id else ""
                print(f"note: nothing to resume (no checkpoint in {self.ckpt_dir}); starting from "
                      f"step 0{adopted}", file=sys.stderr)
            status, diverged_at = self._loop(cfg)
        except KeyboardInterrupt:  # a second Ctrl-C during the emergency checkpoint: the last
            self.callbacks.call("on_error", self, store.INTERRUPTED)  # checkpoint stays
            raise
        except BaseException:
            self.callbacks.call("on_error", self, store.FAILED)
            raise
        result = RunResult(status, self.step, self.last.get(M.TRAIN_LOSS), self.eval_loss, diverged_at,
                           self.run_id, str(self.ckpt_dir),
                           self.stop.name if status == store.INTERRUPTED else None)
        self.callbacks.call("on_train_end", self, result)
        return result

    def _loop(self, cfg) -> tuple[str, int | None]:
        """Steps to the end, a divergence or a stop: (status, diverged_at_step)."""
        self.model.train()
        self.snapshot(commit=True)
        t0 = time.perf_counter()
        while self.step < cfg.steps:
            self.train_step(self.step)
            self.step += 1
            self.callbacks.call("on_step_end", self, self.step - 1)
            at_ckpt = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            regular = self.step % cfg.log_every == 0 or self.step == cfg.steps or at_ckpt
            stopping = self.world.agree(self.stop.requested, regular) and self.step < cfg.steps
            if not (regular or stopping):
                continue
            event = self.read_out(time.perf_counter() - t0, regular)
            if self.rewinder is not None and not stopping and self.rewind(event) is not None:
                t0 = time.perf_counter()
                continue
            if event.first_bad is None:
                self.last = event.last
            self.callbacks.call("on_read_out", self, event)
            if event.first_bad is not None:
                return store.DIVERGED, event.first_bad
            if (at_ckpt or stopping) and self.step < cfg.steps:
                self.save()
            if stopping:
                return store.INTERRUPTED, None
            if self.step < cfg.steps:
                self.snapshot(commit=bool(at_ckpt))
            t0 = time.perf_counter()  # tokens/s counts training steps only
        self.save()
        return store.FINISHED, None
