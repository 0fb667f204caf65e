"""The growth exponents of the freshly initialised model (docs/reference.md section 4), logged once
at step 0 (`init/growth_act`, `init/growth_grad`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stability import metric_names as M
from stability.callbacks.base import Callback
from stability.compile import eager
from stability.probes.growth import growth_exponents

if TYPE_CHECKING:
    from stability.trainer import Trainer


class GrowthCallback(Callback):
    """Under data parallel the exponents need the plain model, so they are measured at setup,
    before sharding; a single process measures them at train start (only when not resuming)."""

    def __init__(self) -> None:
        self.growth: dict[str, float] | None = None

    def on_setup(self, trainer: Trainer) -> None:
        if trainer.world.world_size > 1:
            self.growth = self._measure(trainer)

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step == 0:
            growth = self.growth or self._measure(trainer)
            trainer.log_metrics(0, {M.INIT_GROWTH_ACT: growth["act"], M.INIT_GROWTH_GRAD: growth["grad"]})

    @staticmethod
    def _measure(trainer: Trainer) -> dict[str, float]:
        batch = trainer.data.val_batches(trainer.cfg.train.batch_size, 1)[0].to(trainer.device)
        with trainer.autocast(), eager(trainer.cfg.train.compile):
            return growth_exponents(trainer.model, batch.input_ids, batch.labels,
                                    doc_ids=trainer.doc_ids(batch))
