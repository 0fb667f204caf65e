"""Lightning with stability hooks: a LightningModule around a tiny GPT-2 (from a config) on the
default corpus, Lightning's own gradient clipping.

    python examples/lightning_module.py --steps 200 --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from stability.data import DataConfig, build_data
from stability.hooks.lightning import StabilityCallback


class LM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4,
                                                n_positions=64))

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--out", default="runs/lightning")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    data = build_data(DataConfig(max_bytes=300_000), vocab_size=512, seq_len=32, seed=a.seed)
    rows = list(torch.as_tensor(data.train[:, :-1], dtype=torch.long))
    callback = StabilityCallback(tracking_uri=a.tracking_uri, experiment="hooks-examples",
                                 arm="lightning", seed=a.seed)
    trainer = pl.Trainer(max_steps=a.steps, gradient_clip_val=1.0, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         accelerator="cpu", default_root_dir=a.out)
    trainer.fit(LM(), DataLoader(rows, batch_size=8, shuffle=True))
    return callback.monitor.run_id if callback.monitor else ""


if __name__ == "__main__":
    print(main())
