"""`StabilityCallback` for Lightning: our probes, spike rules, MLflow tracking and dense
artifacts on a `LightningModule` trained by `lightning.Trainer`.

Lightning calls `on_before_optimizer_step` after the step's last backward and before its own
gradient clipping, so the norms read there are pre-clip; the loss is the one `training_step`
returned. With an `MLFlowLogger` the callback writes into the logger's run (one run).
The model the layer map describes is the module itself or one of its direct children
(`self.model = LlamaForCausalLM(...)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn

from stability.hooks.layer_maps import HOOK_MAPS
from stability.hooks.monitor import StabilityMonitor
from stability.hooks.options import parse_options


def described_model(module: nn.Module) -> nn.Module:
    """`module`, or its first direct child, that a known layer map describes."""
    for candidate in (module, *module.children()):
        if any(m.describes(candidate) for m in HOOK_MAPS):
            return candidate
    raise ValueError(f"no layer map describes {type(module).__name__} or its children: pass "
                     "layer_map= to StabilityMonitor in a plain loop instead")


class StabilityCallback(pl.Callback):
    """A Lightning `Callback`; `options` as `StabilityMonitor`'s (checked here)."""

    def __init__(self, **options: Any) -> None:
        parse_options(options)
        self.raw = dict(options)
        self.monitor: StabilityMonitor | None = None
        self._steps = 0  # trainer.global_step at the last after_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank monitors (its collectives must match the others'); rank 0 records
        defaults: dict[str, Any] = {"output_dir": str(Path(trainer.default_root_dir) / "stability")}
        if trainer.gradient_clip_val and trainer.gradient_clip_algorithm in (None, "norm"):
            defaults["clip_grad_norm"] = float(trainer.gradient_clip_val)
        attach, uri = None, None
        logger = trainer.logger
        if type(logger).__name__ == "MLFlowLogger":
            attach, uri = logger.run_id, logger.experiment.tracking_uri
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self._steps = trainer.global_step
        self.monitor = StabilityMonitor.from_options(
            described_model(pl_module), optimizer, parse_options(self.raw, **defaults),
            hook="lightning", attach_run_id=attach, tracking_uri=uri, start_step=trainer.global_step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        if self.monitor is not None:
            self.monitor.after_backward()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.monitor.add_loss(loss)
        if trainer.global_step > self._steps:  # an optimizer step ran in this batch
            self._steps = trainer.global_step
            self.monitor.after_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.close("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")
