"""The trainer: composes data, model, loss, clipping, AdamW, schedule, checkpoints and tracking.

The hot loop keeps every per-step scalar on device in a `[log_every, K]` buffer and copies it to
the host once per read-out (`train.log_every`): no `.item()` per step. A non-finite loss or grad
norm is found at the read-out and ends the run with status `diverged` at the exact step.

Read-outs fall on the multiples of `log_every` (and at checkpoints and the last step), so a run
resumed from any step reads out where the uninterrupted one did. A stop signal (SIGTERM, SIGINT,
a pre-timeout signal: stability.stop) ends the run after the current step: its rows are read out
and logged (the per-read-out series wait for the next regular read-out), a checkpoint is written
whatever `checkpoint_every` says and the run ends with status `interrupted`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import model as model_lib
from model.config import ConfigError
from stability import metric_names as M
from stability import store
from stability.checkpoint import save_checkpoint
from stability.compile import apply_train_options, eager
from stability.config import RunConfig, config_hash, flatten, resume_conflicts, to_toml
from stability.data import Batch, build_data
from stability.dense import DenseWriter
from stability.dist_checkpoint import find_latest, save_sharded
from stability.distributed import data_parallel, resolve_device, shard_model
from stability.hardware import device_peak_flops, mfu
from stability.loss import LossParts, fused_lm_loss
from stability.optim import AdamW, SkipStep, clip_grad_norm_, param_groups
from stability.presets import recipe_deviations, run_recipe_of
from stability.probes.growth import growth_exponents
from stability.probes.session import ProbeSession
from stability.schedule import lr_at
from stability.seeding import derive_seeds, init_generator
from stability.stop import ALWAYS, StopRequest, handling
from stability.store import Tag, absolute_uri, resolve_uri
from stability.tracking import Tracker, git_commit, resumable_run_id

DENSE_FLUSH_READOUTS = 10  # a dense Parquet part every 10 read-outs (and at checkpoints, end)

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


def _safe_name(name: str) -> str:
    """A run name as a folder name: anything but letters, digits, `.`, `_`, `-` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "run"


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.preset or 'custom'}-s{cfg.train.seed}-{config_hash(cfg)[:8]}"


class Trainer:
    """Builds everything from a `RunConfig` and runs (or resumes) it to the end."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, progress: bool = True,
                 stop_signals: Sequence[int] = ALWAYS) -> None:
        cfg.validate()
        self.cfg = cfg
        self.resume = resume
        self.stop_signals = tuple(stop_signals)  # end the run cleanly after the current step
        self.stop = StopRequest()
        # Data parallel under torchrun (stability.distributed), else None and a single process.
        self.dist, self.device = data_parallel(cfg, resolve_device(cfg.train.device))
        self.rank0 = self.dist is None or self.dist.is_rank0  # tracking, artifacts, progress bar
        self.progress = progress and self.rank0
        self.on_read_out: Callable[[int, dict[str, float]], None] | None = None  # (step, last values)
        model_lib.check_attention_backend(cfg.model.attention, self.device.type)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.run_name = cfg.tracking.run_name or default_run_name(cfg)
        self.ckpt_dir = Path(cfg.train.checkpoint_dir or Path("runs") / _safe_name(self.run_name))
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.peak_flops = device_peak_flops(self.device, precision)  # None: no MFU (CPU, unknown)

        seeds = derive_seeds(cfg.train.seed)
        with self.dist.rank0_first() if self.dist else contextlib.nullcontext():  # disk caches
            self.data = build_data(cfg.data, vocab_size=cfg.model.vocab_size,
                                   seq_len=cfg.train.seq_len, seed=seeds["data"], progress=self.progress)
        self.model = model_lib.build(cfg.model, generator=init_generator(cfg.train.seed))
        self.model.to(self.device)
        self.flops_per_token = self.model.flops_per_token(cfg.train.seq_len)
        self._init_growth: dict[str, float] | None = None
        if self.dist is not None:  # FSDP2 (the growth probe needs the plain model: it runs first)
            if self.rank0 and cfg.probes.enabled and cfg.tracking.enabled:
                self._init_growth = self._growth()
            shard_model(self.model, cfg)
        apply_train_options(self.model, cfg.train.compile, cfg.train.activation_checkpointing)
        self.probes = ProbeSession(self.model, cfg.probes, self.dist)
        self.params = self.probes.params
        o = cfg.optim
        self.optimizer = AdamW(param_groups(self.model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.skip = SkipStep.from_config(o, self.device) if o.skip_step else None
        self.step = 0
        self.tokens_seen = 0
        self.run_id: str | None = None
        self.tracker: Tracker | None = None
        self._buffer = torch.zeros(cfg.train.log_every, self.probes.step_spec.width,
                                   device=self.device)
        self._buffer_start = 0  # step of the buffer's first row
        self._buffer_rows = 0
        self._masked = 0  # labels masked by the n-gram filter since the last read-out
        self.dense_dir = self.ckpt_dir / "dense"
        self.dense = DenseWriter(self.dense_dir) if cfg.probes.enabled and self.rank0 else None
        self._read_outs = 0

    # ------------------------------------------------------------------ one optimizer step
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _doc_ids(self, batch: Batch) -> torch.Tensor | None:
        return batch.doc_ids if self.cfg.data.doc_mask else None

    def _forward_loss(self, batch: Batch, probe: bool = False
                      ) -> tuple[LossParts, list[torch.Tensor] | None]:
        with self._autocast():
            return model_loss(self.model, batch.input_ids, batch.labels, self.cfg.loss.z_loss,
                              self._doc_ids(batch), probe)

    def train_step(self, step: int) -> None:
        """Forward, loss, backward, clip, (skip-)step at `step`; scalars stay on device."""
        cfg = self.cfg
        batch = self.data.train_batch(step, cfg.train.batch_size)
        lr = lr_at(step, peak=cfg.optim.lr, total=cfg.train.steps, warmup=cfg.schedule.warmup_steps,
                   kind=cfg.schedule.kind, alpha_f=cfg.schedule.alpha_f)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        probe = self.probes.is_probe_step(step)
        if self.dist is None:
            batch = batch.to(self.device)
            parts, hidden = self._forward_loss(batch, probe)
            parts.loss.backward()
            grad_norm, clip_coef, tensor_norms = clip_grad_norm_(self.params, cfg.optim.clip_grad_norm)
        else:  # this rank's rows; loss, norms and clipping become the global batch's (one all-reduce)
            local = self.dist.local_batch(batch)
            parts, hidden = self._forward_loss(local.to(self.device), probe)
            share = self.dist.loss_share(local, batch)
            (parts.loss * share).backward()
            reduce = self.dist.packed_sum(parts, share)
            grad_norm, clip_coef, tensor_norms = clip_grad_norm_(self.params, cfg.optim.clip_grad_norm,
                                                                 reduce)
            parts, batch = reduce.global_parts(), batch.to(self.device)
        factor = None
        if self.skip is not None:  # OLMo-core feeds the grad norm only when it clips
            factor = self.skip(parts.ce, grad_norm if cfg.optim.clip_grad_norm > 0 else None)
        self.optimizer.step(factor)
        self.optimizer.zero_grad(set_to_none=True)
        skipped = 1.0 - factor if factor is not None else torch.zeros((), device=self.device)
        row = self.probes.step_row(parts, grad_norm, clip_coef, skipped, tensor_norms)
        self._buffer[self._buffer_rows].copy_(row)
        with eager(self.cfg.train.compile):
            self.probes.after_step(step, parts, hidden, self.optimizer, self.model, batch.input_ids,
                                   self._doc_ids(batch))
        self._buffer_rows += 1
        self.tokens_seen += batch.input_ids.numel()
        self._masked += batch.n_masked  # host-side count from the loader: no sync

    # ------------------------------------------------------------------ read-out and eval
    def _read_out(self, elapsed: float, partial: bool = False) -> tuple[dict[str, float], int | None]:
        """One host copy of the step buffer and probe rows; log them; find the first non-finite.

        `partial` (a stop between read-outs): the rows are logged, the per-read-out series are not
        (the count of masked labels goes on in the checkpoint), so a resumed run logs them at the
        step the uninterrupted one does.
        """
        found = self.probes.read_out(self._buffer[: self._buffer_rows], self._buffer_start)
        if self.tracker:
            for step, named in found.steps + found.probes:
                self.tracker.log_metrics(step, named)
        if self.dense is not None:
            for step, key, values in found.dense:
                arr = np.asarray(values, dtype=np.float32)
                self.dense.add(step, key, arr, layers=self.probes.layers if arr.ndim == 2 else None)
            self._read_outs += 1
            if self._read_outs % DENSE_FLUSH_READOUTS == 0:
                self._flush_dense()
        last = dict(found.steps[-1][1]) if found.steps else {}
        n_tokens = self._buffer_rows * self.cfg.train.batch_size * self.cfg.train.seq_len
        last[M.TRAIN_TOKENS_PER_S] = n_tokens / max(elapsed, 1e-9)
        if self.peak_flops:  # tokens/s is the global batch's: the peak is every rank's
            last[M.TRAIN_MFU] = mfu(last[M.TRAIN_TOKENS_PER_S], self.flops_per_token, self.peak_flops,
                                    self.dist.world_size if self.dist else 1)
        last[M.TRAIN_TOKENS] = float(self.tokens_seen)
        last[M.TRAIN_LR] = self.optimizer.param_groups[0]["lr"]
        last[M.TRAIN_MASKED_TOKENS] = float(self._masked)
        if not partial:
            self._masked = 0
        if self.probes.monitor is not None:
            last.update(self.probes.monitor.scores())
        if self.tracker and found.first_bad is None and not partial:
            self.tracker.log_metrics(self._buffer_start + self._buffer_rows - 1, {
                k: v for k, v in last.items()
                if k in (M.TRAIN_TOKENS_PER_S, M.TRAIN_MFU, M.TRAIN_TOKENS, M.TRAIN_LR,
                         M.TRAIN_MASKED_TOKENS)
                or k.startswith("spike/")})
        self._buffer_start += self._buffer_rows
        self._buffer_rows = 0
        return last, found.first_bad

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted held-out cross-entropy over `train.eval_batches` fixed batches."""
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for batch in self.data.val_batches(self.cfg.train.batch_size, self.cfg.train.eval_batches):
            batch = (batch if self.dist is None else self.dist.local_batch(batch)).to(self.device)
            n = int((batch.labels != -100).sum())
            total += self._forward_loss(batch)[0].ce * n
            count += n
        if self.dist is not None:
            total, count = self.dist.eval_sums(total, count)
        self.model.train()
        return float(total) / max(count, 1)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, weights: bool = True) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "masked_since_read_out": self._masked,  # nonzero after a stop between read-outs
            **({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
               if weights else {}),
            "skip_step": self.skip.state_dict() if self.skip else None,
            "spikes": self.probes.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "run_id": self.run_id,
            "config": self.cfg.to_dict(),
        }

    def save(self) -> None:
        keep = self.cfg.train.keep_checkpoints
        if self.dist is None:
            save_checkpoint(self.ckpt_dir, self.step, self._state(), keep=keep)
        else:  # sharded (stability.dist_checkpoint), every rank
            save_sharded(self.ckpt_dir, self.step, self.model, self.optimizer, self._state(False), keep)

    def _restore(self) -> bool:
        found = find_latest(self.ckpt_dir, map_location=self.device)  # .pt or sharded: any ranks
        if found is None:
            return False
        state = found.state
        changed = resume_conflicts(state["config"], self.cfg)
        if changed:
            raise ConfigError(f"--resume: checkpoint in {self.ckpt_dir} was made with other values "
                              f"for {', '.join(changed)}")
        found.load_weights(self.model, self.optimizer)
        if self.skip is not None and state["skip_step"] is not None:
            self.skip.load_state_dict(state["skip_step"])
        self.probes.load_state_dict(state.get("spikes"))
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self._masked = int(state.get("masked_since_read_out", 0))
        self._buffer_start = self.step
        self.run_id = state["run_id"]
        return True

    # ------------------------------------------------------------------ tracking
    def _cell(self) -> str:
        """The config's content hash: a grid cell's id, and what a run adopted by name must match."""
        return config_hash(self.cfg)[:12]

    def _start_tracking(self) -> None:
        t = self.cfg.tracking
        if not t.enabled or not self.rank0:
            return
        parent = {Tag.PARENT_RUN_ID: t.parent_run_id} if t.parent_run_id else {}
        write_uri = t.via or t.uri  # a grid's loopback server, else the store itself
        run_id = self.run_id or t.run_id or None
        if run_id is None and self.resume:  # no checkpoint: the run of this name, never a second
            run_id = resumable_run_id(write_uri, t.experiment, self.run_name, self._cell())
        self.tracker = Tracker(write_uri, t.experiment, self.run_name, run_id=run_id,
                               spool_dir=self.ckpt_dir / "mlflow_spool",
                               tags={**parent, Tag.CELL: self._cell(), Tag.STATUS: store.RUNNING})
        self.run_id = self.tracker.run_id
        if self.tracker.resumed and self.step > 0:
            self.tracker.set_tags({Tag.STATUS: store.RUNNING, Tag.RESUMED_AT_STEP: self.step})
            return
        params = flatten(self.cfg.to_dict())
        params["tracking.uri"] = absolute_uri(resolve_uri(t.uri))  # the store the user named
        del params["tracking.via"]  # how this process reached it: gone after the run
        self.tracker.log_params(params)
        base, deviations = recipe_deviations(self.cfg)
        self.tracker.set_tags({
            Tag.RECIPE: run_recipe_of(self.cfg), Tag.BASE_RECIPE: base,
            Tag.DEVIATIONS: ",".join(f"{k}={v}" for k, v in sorted(deviations.items())),
            Tag.PRESET: self.cfg.preset or "custom",
            Tag.SEED: self.cfg.train.seed, Tag.LR: self.cfg.optim.lr,
            Tag.CELL: self._cell(), Tag.STATUS: store.RUNNING, Tag.GIT_COMMIT: git_commit(),
            Tag.ARM: t.arm or None, **parent,
            Tag.DEVICE: str(self.device), Tag.RANKS: self.dist.world_size if self.dist else 1,
            Tag.DATA_FINGERPRINT: self.data.fingerprint,
            Tag.ATTENTION: model_lib.resolve_attention_backend(self.cfg.model.attention,
                                                               self.device.type),
            Tag.N_PARAMS: self.model.num_params(),
        })
        self.tracker.log_text(to_toml(self.cfg), "config.toml")

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunResult:
        """Train to `train.steps` (from the last checkpoint with `resume`); never raises on NaN.

        One of `stop_signals` ends it after the current step, checkpointed, status `interrupted`.
        """
        with handling(self.stop_signals, self.stop.handle):
            return self._run()

    def _stop_agreed(self, at_read_out: bool) -> bool:
        """Whether a stop signal ends the run after this step. Under torchrun every rank must stop
        at the same step (the checkpoint is collective): the flag is summed over the ranks at
        read-outs, where the host syncs anyway, so a rank never waits for one that has left."""
        if self.dist is None:
            return self.stop.requested
        if not at_read_out:
            return False
        flag = torch.tensor(float(self.stop.requested), device=self.device)
        return bool(self.dist.sum_(flag).item() > 0)

    def _run(self) -> RunResult:
        cfg = self.cfg.train
        restored = self.resume and self._restore()
        self._start_tracking()
        if self.resume and not restored:
            adopted = f" in MLflow run {self.run_id}" if self.tracker and self.tracker.resumed else ""
            print(f"note: nothing to resume (no checkpoint in {self.ckpt_dir}); starting from step 0"
                  f"{adopted}", file=sys.stderr)
        if self.step == 0 and self.cfg.probes.enabled:
            self._log_growth()
        self.model.train()
        bar = _progress_bar(cfg.steps, self.step, self.progress)
        status, diverged_at, last, eval_loss = "finished", None, {}, None
        t0 = time.perf_counter()
        try:
            while self.step < cfg.steps:
                self.train_step(self.step)
                self.step += 1
                bar.update(1)
                at_ckpt = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                regular = self.step % cfg.log_every == 0 or self.step == cfg.steps or at_ckpt
                stopping = self._stop_agreed(regular) and self.step < cfg.steps
                if regular or stopping:
                    last, diverged_at = self._read_out(time.perf_counter() - t0, partial=not regular)
                    if diverged_at is not None:
                        status = "diverged"
                        break
                    bar.set_postfix(loss=f"{last[M.TRAIN_LOSS]:.3f}",
                                    gnorm=f"{last[M.GRAD_NORM]:.2f}",
                                    tok_s=f"{last[M.TRAIN_TOKENS_PER_S]:.0f}",
                                    **({"mfu": f"{last[M.TRAIN_MFU]:.1%}"} if M.TRAIN_MFU in last else {}),
                                    spikes=int(last.get(M.SPIKE_COUNT, 0)))
                    if self.on_read_out is not None:
                        self.on_read_out(self.step, last)
                    if regular and cfg.eval_every and self.step % cfg.eval_every == 0 \
                            and self.step < cfg.steps:
                        eval_loss = self._log_eval()
                    if (at_ckpt or stopping) and self.step < cfg.steps:
                        self._flush_dense()
                        self.save()
                        self._log_spikes()
                    if stopping:
                        status = "interrupted"
                        break
                    t0 = time.perf_counter()  # tokens/s counts training steps only
            if status == "finished":
                eval_loss = self._log_eval()
                self.save()
        except KeyboardInterrupt:  # a second Ctrl-C during the emergency checkpoint: the last
            bar.close()  # checkpoint written before stays, and so does the run's resumability
            if self.tracker:
                self.tracker.finish("interrupted", {"interrupted_at_step": self.step})
            raise
        except BaseException:
            bar.close()
            if self.tracker:
                self.tracker.finish("failed")
            raise
        bar.close()
        self._flush_dense()
        self._log_spikes()
        stop_signal = self.stop.name if status == "interrupted" else None
        if self.tracker:
            tags = {"diverged_at_step": diverged_at} if diverged_at is not None else {}
            if stop_signal:
                tags = {"interrupted_at_step": self.step, "stop_signal": stop_signal}
            self.tracker.finish(status, tags)
        return RunResult(status, self.step, last.get(M.TRAIN_LOSS), eval_loss, diverged_at,
                         self.run_id, str(self.ckpt_dir), stop_signal)

    def _growth(self) -> dict[str, float]:
        batch = self.data.val_batches(self.cfg.train.batch_size, 1)[0].to(self.device)
        with self._autocast(), eager(self.cfg.train.compile):
            return growth_exponents(self.model, batch.input_ids, batch.labels,
                                    doc_ids=self._doc_ids(batch))

    def _log_growth(self) -> None:
        """The growth exponents of the freshly initialised model (REFERENCE.md section 2), once."""
        if self.tracker:
            growth = self._init_growth or self._growth()
            self.tracker.log_metrics(0, {M.INIT_GROWTH_ACT: growth["act"],
                                         M.INIT_GROWTH_GRAD: growth["grad"]})

    def _flush_dense(self) -> None:
        """Write the buffered dense rows as a Parquet part and queue its upload."""
        if self.dense is not None and self.dense.flush() is not None and self.tracker:
            self.tracker.log_dense_parts(self.dense_dir)

    def _log_spikes(self) -> None:
        """The spike events so far as the `spikes.csv` artifact (rewritten as it grows)."""
        if self.tracker and self.probes.monitor is not None:
            self.tracker.log_text(self.probes.monitor.frame().to_csv(index=False),
                                  M.SPIKES_ARTIFACT)

    def _log_eval(self) -> float:
        value = self.evaluate()
        if self.tracker:
            self.tracker.log_metrics(self.step - 1, {M.EVAL_LOSS: value})
        return value


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr)


def train(cfg: RunConfig, *, resume: bool = False, progress: bool = True,
          stop_signals: Sequence[int] = ALWAYS) -> RunResult:
    """Build a `Trainer` for `cfg` and run it."""
    return Trainer(cfg, resume=resume, progress=progress, stop_signals=stop_signals).run()

