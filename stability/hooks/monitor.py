"""`StabilityMonitor`: our probes, spike rules with attribution, MLflow tracking, spikes.csv and
dense Parquet parts for a training loop that is not ours.

A plain loop places two calls where it already has a natural point, and ends with `close`:

    with StabilityMonitor(model, optimizer, arm="baseline", seed=0) as monitor:
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            monitor.after_backward(loss)      # before the loop's own clipping
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            monitor.after_step()              # the optimizer step is done
            optimizer.zero_grad()

The rows, cadences and names are the trainer's (`stability.probes.session.ProbeSession` over
the declarations a hook can fill, `stability.hooks.metrics`): statistics stay on device, the
rows since the last read-out reach the host in one copy every `log_every` steps. The monitor is
the "trainer" our dense and spikes callbacks are written against (`ckpt_dir`, `probes`,
`log_text`, `log_dense_parts`), so those are reused as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from stability import metric_names as M
from stability import store
from stability.callbacks.base import Callbacks, ReadOutEvent
from stability.callbacks.dense import DenseCallback
from stability.callbacks.spikes import SpikesCsvCallback
from stability.config import flatten
from stability.hooks.capture import BlockOutputs, GradNorms, InputIds, StepLoss
from stability.hooks.layer_maps import find_layer_map, has_attention_probe
from stability.hooks.metrics import hook_registry, skipped
from stability.hooks.options import HookOptions, parse_options
from stability.hooks.parallel import hook_world, unwrapped
from stability.hooks.spikes import HostSpikeMonitor
from stability.hooks.tracking import HookTracking
from stability.loss import LossParts
from stability.probes.layer_map import LayerMap
from stability.probes.session import ProbeSession
from stability.trainer import RunResult, StepBuffer, safe_name


class HookSession(ProbeSession):
    """The trainer's probe session over a hook's registry: no attention step when the registry
    has no attention row (the layer map gives no q and k) or the step's batch was not seen."""

    has_batch = False  # set by the monitor each step

    def is_attn_step(self, step: int) -> bool:
        return bool(self.attn_spec.fields) and self.has_batch and super().is_attn_step(step)


def is_adam(optimizer: Any) -> bool:
    """Whether the optimizer keeps Adam's moments (`exp_avg`, `exp_avg_sq`, `step`): the update
    and eps-regime probes read them."""
    defaults = getattr(optimizer, "defaults", None) or {}
    return "betas" in defaults and "eps" in defaults


class StabilityMonitor:
    """Probes, spikes and tracking for one run of a foreign loop (see the module docstring).

    `options`: `stability.hooks.options.ALLOWED` (tracking, run identity and every
    `ProbesConfig` knob by its name); an unknown one raises `ConfigError` at construction.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 layer_map: LayerMap | None = None, **options: Any) -> None:
        self._setup(model, optimizer, parse_options(options), layer_map, hook="plain",
                    watch_loss=True)

    @classmethod
    def from_options(cls, model: nn.Module, optimizer: Any, options: HookOptions, *,
                     layer_map: LayerMap | None = None, hook: str, watch_grads: bool = False,
                     watch_loss: bool = False, attach_run_id: str | None = None,
                     tracking_uri: str | None = None, start_step: int = 0) -> StabilityMonitor:
        """A monitor for a host framework's adapter: gradients read as backward accumulates
        them (`watch_grads`: the host clips before any callback runs), the loss from the model's
        outputs (`watch_loss`), a run the host opened (`attach_run_id` in `tracking_uri`)."""
        self = cls.__new__(cls)
        self._setup(model, optimizer, options, layer_map, hook=hook, watch_grads=watch_grads,
                    watch_loss=watch_loss, attach_run_id=attach_run_id, tracking_uri=tracking_uri,
                    start_step=start_step)
        return self

    def _setup(self, model: nn.Module, optimizer: Any, options: HookOptions,
               layer_map: LayerMap | None, *, hook: str, watch_grads: bool = False,
               watch_loss: bool = False, attach_run_id: str | None = None,
               tracking_uri: str | None = None, start_step: int = 0) -> None:
        self.options, self.model, self.optimizer, self.hook = options, model, optimizer, hook
        self.inner = inner = unwrapped(model)  # DDP: the wrapped module's blocks are the model's
        self.layer_map = find_layer_map(inner, layer_map)
        self.world = hook_world(list(inner.parameters()))
        # sharded blocks are not whole outside their forward: no attention recompute there
        registry = hook_registry(has_attention_probe(self.layer_map) and not self.world.sharded,
                                 optimizer is not None and is_adam(optimizer))
        self.skipped = skipped(registry)
        device = next(inner.parameters()).device
        self.probes = HookSession(inner, options.probes, self.world.probe_dp(device),
                                  layer_map=self.layer_map, registry=registry)
        if options.probes.spikes:
            self.probes.monitor = HostSpikeMonitor(options.probes)
        self.run_name = options.run_name or f"{hook}-{type(model).__name__}"
        self.ckpt_dir = Path(options.output_dir or Path("runs") / safe_name(self.run_name))
        self.run_id: str | None = None
        self.step = start_step
        self.diverged_at: int | None = None
        self.closed = False
        self.buffer = StepBuffer(options.log_every, self.probes.step_spec.width, device)
        self.buffer.start = start_step
        self.grads = GradNorms(self.probes.params)
        if watch_grads:
            self.grads.watch()
        self.loss = StepLoss()
        if watch_loss:
            self.loss.watch(model)
        self.blocks = BlockOutputs(self.layer_map.blocks_of(inner))
        self.inputs = InputIds(inner) if self.probes.attn_spec.fields else None
        self.blocks.armed = self.probes.is_probe_step(self.step)
        self.probes.arm(self.step)
        self._zero = torch.zeros((), device=device)
        items = []
        if options.tracking and self.world.is_rank0:  # every rank computes, rank 0 records
            items.append(HookTracking(attach_run_id, tracking_uri))
        if options.probes.enabled and self.world.is_rank0:
            items.extend([DenseCallback(), SpikesCsvCallback()])
        self.callbacks = Callbacks(items)
        if self.skipped and self.world.is_rank0:
            print(f"stability hooks ({self.layer_map.name}): not measured here: "
                  f"{', '.join(self.skipped)}", file=sys.stderr)
        self.callbacks.call("on_train_start", self)

    # ---------------------------------------------------------------- what the callbacks use
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.callbacks.call("on_metrics", self, step, values)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.callbacks.call("on_text", self, text, artifact_file)

    def log_dense_parts(self, directory: Path) -> None:
        self.callbacks.call("on_dense_parts", self, directory)

    def lr(self) -> float | None:
        """The learning rate of the optimizer's first group now (None without an optimizer)."""
        groups = getattr(self.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else None

    def params(self) -> dict[str, Any]:
        """The run's params as logged (`stability.` prefixed): options, model and optimizer."""
        o = self.options
        out: dict[str, Any] = {k: v for k, v in vars(o).items() if k != "probes"}
        out.update(flatten({"probes": vars(o.probes)}))
        out.update({"hook": self.hook, "model.class": type(self.inner).__name__,
                    "model.layer_map": self.layer_map.name,
                    "optim.class": type(self.optimizer).__name__ if self.optimizer else None,
                    "optim.lr": self.lr()})
        return out

    # ---------------------------------------------------------------- the loop's calls
    def after_backward(self, loss: torch.Tensor | None = None) -> None:
        """The gradients of this step are complete (after the last micro-batch's backward, before
        the loop clips them): read their per-tensor norms on device; `loss`: the step's loss
        (a micro-batch's, with accumulation: their mean is logged); without one, the loss of the
        model's outputs (a Hugging Face model's `loss`)."""
        if loss is not None:
            self.loss.add(loss)
        if not self.grads.watching:
            self.grads.read()

    def add_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss of this step (kept on device; the step logs their mean)."""
        self.loss.add(loss)

    def after_step(self) -> None:
        """The optimizer step is done: this step's device rows, and a read-out every `log_every`."""
        if self.closed or self.diverged_at is not None:
            self._advance()
            return
        norms = self.grads.take()
        hidden = self.blocks.take()
        if norms is None:
            raise RuntimeError("StabilityMonitor.after_step: no gradients seen this step (call "
                               "after_backward() after backward, before the optimizer step)")
        device = self._zero.device
        loss = self.loss.take(device)
        norms, loss = self.world.reduce(norms, loss)  # the whole model's, every rank's batch
        grad_norm = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        clip = self.options.clip_grad_norm
        coef = (torch.clamp(clip / (grad_norm + 1e-6), max=1.0) if clip > 0
                else torch.ones((), device=device))
        parts = LossParts(loss, loss, self._zero, self._zero, self._zero)  # only `loss` is read
        self.buffer.append(self.probes.step_row(parts, grad_norm, coef, self._zero, norms))
        ids = self.inputs.take() if self.inputs is not None else None
        self.probes.has_batch = ids is not None
        self.probes.after_step(self.step, parts, hidden, self.optimizer, self.inner,
                               ids if ids is not None else torch.zeros(0, dtype=torch.long), None)
        self._advance()
        if self.step % self.options.log_every == 0:
            self.read_out()

    def _advance(self) -> None:
        self.step += 1
        self.blocks.armed = self.probes.is_probe_step(self.step)
        self.probes.arm(self.step)

    def read_out(self, regular: bool = True) -> ReadOutEvent | None:
        """Copy the rows since the last read-out to the host (one transfer) and hand them on."""
        if self.buffer.rows == 0:
            return None
        rows, start = self.buffer.take()
        found = self.probes.read_out(rows, start)
        summary: dict[str, float] = {}
        if self.lr() is not None:
            summary[M.TRAIN_LR] = self.lr()  # type: ignore[assignment]
        if self.probes.monitor is not None:
            summary.update(self.probes.monitor.scores())
        last = {**(found.steps[-1][1] if found.steps else {}), **summary}
        event = ReadOutEvent(start + rows.shape[0] - 1, found.steps, found.probes, found.dense,
                             summary, last, regular, found.first_bad)
        self.callbacks.call("on_read_out", self, event)
        if found.first_bad is not None:
            self.diverged_at = found.first_bad
            print(f"stability hooks: non-finite loss or grad norm at step {found.first_bad}; "
                  "nothing more is logged", file=sys.stderr)
        return event

    def close(self, status: str = store.FINISHED) -> None:
        """Read out what is left, write spikes.csv and the last dense part, end the run with
        `status` (finished, failed, interrupted; a run that went non-finite ends diverged)."""
        if self.closed:
            return
        if self.diverged_at is None:
            self.read_out(regular=True)
        self.closed = True
        for capture in (self.grads, self.blocks, self.loss, self.inputs, self.probes):
            if capture is not None:
                capture.close()
        if self.diverged_at is not None and status == store.FINISHED:
            status = store.DIVERGED
        result = RunResult(status, self.step, None, None, self.diverged_at, self.run_id,
                           str(self.ckpt_dir))
        self.callbacks.call("on_train_end", self, result)

    def __enter__(self) -> StabilityMonitor:
        return self

    def __exit__(self, kind: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if kind is None:
            self.close(store.FINISHED)
        else:
            self.close(store.INTERRUPTED if issubclass(kind, KeyboardInterrupt) else store.FAILED)
