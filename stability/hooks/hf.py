"""`StabilityCallback` for the Hugging Face `Trainer`: our probes, spike rules, MLflow tracking
and dense artifacts on a model trained by `transformers`.

- The gradient norms are the pre-clip ones: the Trainer clips (`max_grad_norm`) before any
  callback runs, so the per-tensor norms are written by gradient hooks as backward accumulates
  them; its clipping itself is left alone (`grad/clip_coef` is the factor it applied).
- With the Trainer's MLflow integration on (`report_to` has "mlflow"), the callback writes into
  the run the integration opened: one run, its store; our `tracking_uri` / `experiment`, when
  given, are handed to the integration before it opens it.
- Steps are counted from 0 like our trainer's (the Trainer's `global_step` - 1).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stability import store
from stability.hooks.monitor import StabilityMonitor
from stability.hooks.options import parse_options


def mlflow_integration_on(args: Any) -> bool:
    """Whether the Trainer's own MLflow callback runs (`report_to` has "mlflow")."""
    report_to = args.report_to or []
    return "mlflow" in ([report_to] if isinstance(report_to, str) else report_to)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper (its state and groups are the probes')."""
    return getattr(optimizer, "optimizer", optimizer)


class StabilityCallback(TrainerCallback):
    """A `transformers.TrainerCallback`; `options` as `StabilityMonitor`'s (checked here)."""

    def __init__(self, **options: Any) -> None:
        parse_options(options)  # fail at construction, with the option's name
        self.raw = dict(options)
        self.monitor: StabilityMonitor | None = None

    def on_init_end(self, args, state, control, **kwargs):
        """Point the integration at our store and experiment before it opens its run."""
        if not (mlflow_integration_on(args) and state.is_world_process_zero):
            return
        import mlflow

        uri = self.raw.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:  # what the integration would set, set first: the experiment below lives there
            mlflow.set_tracking_uri(uri)
        if self.raw.get("experiment") and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            mlflow.set_experiment(self.raw["experiment"])

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:  # every rank monitors (collectives must match); rank 0 records
            return
        defaults: dict[str, Any] = {"clip_grad_norm": float(max(args.max_grad_norm or 0.0, 0.0)),
                                    "seed": int(args.seed),
                                    "output_dir": str(Path(args.output_dir) / "stability"),
                                    "log_every": max(int(args.logging_steps), 1)
                                    if float(args.logging_steps).is_integer() else 10}
        if args.run_name:
            defaults["run_name"] = args.run_name
        attach, uri = None, None
        if mlflow_integration_on(args):
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                attach, uri = active.info.run_id, mlflow.get_tracking_uri()
        self.monitor = StabilityMonitor.from_options(
            model, unwrap_optimizer(optimizer), parse_options(self.raw, **defaults), hook="hf",
            watch_grads=True, watch_loss=True, attach_run_id=attach, tracking_uri=uri,
            start_step=state.global_step)
        # HF calls no callback when training raises: the run must not stay "running"
        atexit.register(self._end_unended)

    def _end_unended(self) -> None:
        if self.monitor is not None and not self.monitor.closed:
            print("stability hooks: the HF Trainer never ended training (an exception?): the run "
                  "is marked failed", file=sys.stderr)
            self.monitor.close(store.FAILED)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.after_step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
