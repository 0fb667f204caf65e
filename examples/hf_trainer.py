"""The Hugging Face Trainer with stability hooks: a tiny OLMo 2 (from a config) on the default
corpus, HF's own clipping and (with `--mlflow`) its MLflow integration, still one run.

    python examples/hf_trainer.py --steps 200 --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse

import torch
from transformers import Olmo2Config, Olmo2ForCausalLM, Trainer, TrainingArguments

from stability.data import DataConfig, build_data
from stability.hooks.hf import StabilityCallback


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--out", default="runs/hf-trainer")
    ap.add_argument("--mlflow", action="store_true", help="HF's MLflow integration on as well")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    data = build_data(DataConfig(max_bytes=300_000), vocab_size=512, seq_len=32, seed=a.seed)
    rows = torch.as_tensor(data.train[:, :-1], dtype=torch.long)
    model = Olmo2ForCausalLM(Olmo2Config(vocab_size=512, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=64, pad_token_id=1, eos_token_id=0))
    callback = StabilityCallback(tracking_uri=a.tracking_uri, experiment="hooks-examples",
                                 arm="hf", seed=a.seed)
    args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=8,
                             learning_rate=1e-3, max_grad_norm=1.0, logging_steps=10, seed=a.seed,
                             report_to="mlflow" if a.mlflow else "none", save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    train = [{"input_ids": r, "labels": r} for r in rows]
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    return callback.monitor.run_id if callback.monitor else ""


if __name__ == "__main__":
    print(main())
