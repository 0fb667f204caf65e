"""What the training loop calls at its named points: one callback per concern.

The trainer owns the loop (step, read-out, eval cadence, checkpoints) and calls every callback at
`on_setup`, `on_train_start`, `on_step_end`, `on_read_out`, `on_checkpoint`, `on_rewind`,
`on_train_end` or `on_error` (names after OLMo-core's and Lightning's). Callbacks that produce
results hand them to the trainer (`Trainer.log_metrics`, `log_text`, `log_dense_parts`), which
passes them on as `on_metrics`, `on_text`, `on_dense_parts`: producers never know where results
go, and the tracking callback is the one place that writes to MLflow.
"""

from stability.callbacks.base import Callback, Callbacks, OnReadOut, ReadOutEvent

__all__ = ["Callback", "Callbacks", "OnReadOut", "ReadOutEvent"]
