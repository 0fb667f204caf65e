"""Train one run: build the trainer from its config, run it, return what it ended with.

The loop and its parts: `stability.trainer`; what happens around it (tracking, dense series,
spikes.csv, evals, growth at init, the progress bar): `stability.callbacks`.
"""

from __future__ import annotations

from collections.abc import Sequence

from stability.callbacks import Callback
from stability.config import RunConfig
from stability.stop import ALWAYS
from stability.trainer import RunResult, Trainer, model_loss

__all__ = ["RunResult", "Trainer", "model_loss", "train"]


def train(cfg: RunConfig, *, resume: bool = False, progress: bool = True,
          stop_signals: Sequence[int] = ALWAYS, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Build a `Trainer` for `cfg` and run it to the end (or a divergence, or a stop signal)."""
    return Trainer(cfg, resume=resume, progress=progress, stop_signals=stop_signals,
                   callbacks=callbacks).run()
