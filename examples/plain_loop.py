"""A plain PyTorch loop with stability hooks: a tiny Llama (from a config) on the default corpus.

    python examples/plain_loop.py --steps 200 --tracking-uri sqlite:///mlflow.db
    stability dashboard hooks-examples
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stability.data import DataConfig, build_data
from stability.hooks import StabilityMonitor


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--out", default="runs/plain-loop")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    data = build_data(DataConfig(max_bytes=300_000), vocab_size=512, seq_len=32, seed=a.seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with StabilityMonitor(model, optimizer, tracking_uri=a.tracking_uri, experiment="hooks-examples",
                          arm="plain", seed=a.seed, output_dir=a.out, clip_grad_norm=1.0) as monitor:
        for step in range(a.steps):
            batch = data.train_batch(step, 4)
            loss = model(input_ids=batch.input_ids, labels=batch.input_ids).loss
            loss.backward()
            monitor.after_backward(loss)  # pre-clip norms, on device
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            monitor.after_step()
            optimizer.zero_grad(set_to_none=True)
    return monitor.run_id or ""


if __name__ == "__main__":
    print(main())
