"""`stability.hooks.lightning.StabilityCallback` on a LightningModule wrapping a tiny Llama, with
Lightning's own clipping: the logged norms are the pre-clip ones of the layers' .grad."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stability import metric_names as M
from stability.dense import read_dense
from stability.hooks.lightning import StabilityCallback
from tests.hooks.helpers import MODELS, assert_once_per_step, history, layer_norms

STEPS, CLIP = 6, 0.25


class TinyLM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = MODELS["llama"]()
        self.pre_clip: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def on_before_optimizer_step(self, optimizer) -> None:  # before Lightning clips
        self.pre_clip.append(layer_norms(self.model, "model.layers"))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def test_lightning_callback_logs_pre_clip_norms(corpus, mlflow_uri, tmp_path) -> None:
    torch.manual_seed(0)
    module = TinyLM()
    callback = StabilityCallback(tracking_uri=mlflow_uri, log_every=2, every=2, arm="pl", seed=0)
    trainer = pl.Trainer(max_steps=STEPS, gradient_clip_val=CLIP, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    rows = corpus.train_batch(0, 4 * STEPS).input_ids
    trainer.fit(module, DataLoader(list(rows), batch_size=4))
    dense = read_dense(tmp_path / "stability" / "dense")
    g = dense[dense.key == M.GRAD_NORM].pivot(index="step", columns="layer", values="value")
    assert g.index.tolist() == list(range(STEPS))
    assert g.to_numpy() == pytest.approx(np.array(module.pre_clip), rel=1e-5)
    hist = history(mlflow_uri, callback.monitor.run_id)
    total = [v for _, v in hist[M.GRAD_NORM]]
    coef = [v for _, v in hist[M.GRAD_CLIP_COEF]]
    assert coef == pytest.approx([min(1.0, CLIP / (t + 1e-6)) for t in total], rel=1e-5)
    assert [s for s, _ in hist[M.TRAIN_LOSS]] == list(range(STEPS))
    assert_once_per_step(hist, list(hist))
