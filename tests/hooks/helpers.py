"""Tiny foreign models built from configs (no downloads) and the independent computations the
hooks are checked against: per-layer and global gradient norms from .grad, MLflow histories."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

VOCAB, SEQ = 512, 32


def olmo2(**overrides) -> nn.Module:
    from transformers import Olmo2Config, Olmo2ForCausalLM
    return Olmo2ForCausalLM(Olmo2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=1, eos_token_id=0, **overrides))


def llama(**overrides) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=3, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64, **overrides))


def qwen2(**overrides) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64, **overrides))


def qwen3(**overrides) -> nn.Module:  # per-head q/k norm before RoPE
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                                        num_key_value_heads=2, max_position_embeddings=64, **overrides))


def gpt2(**overrides) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64, **overrides))


MODELS: dict[str, Callable[..., nn.Module]] = {"olmo2": olmo2, "llama": llama, "gpt2": gpt2,
                                               "qwen2": qwen2, "qwen3": qwen3}
BLOCKS = {"olmo2": "model.layers", "llama": "model.layers", "gpt2": "transformer.h",
          "qwen2": "model.layers", "qwen3": "model.layers"}


def layer_norms(model: nn.Module, blocks: str) -> list[float]:
    """Each block's gradient L2 norm, from its parameters' .grad (independent of the hooks)."""
    out = []
    for block in model.get_submodule(blocks):
        grads = [p.grad.double().reshape(-1) for p in block.parameters() if p.grad is not None]
        out.append(float(torch.linalg.vector_norm(torch.cat(grads))))
    return out


def global_norm(model: nn.Module) -> float:
    grads = [p.grad.double().reshape(-1) for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run: key -> [(step, value)] in step order."""
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def assert_once_per_step(hist: dict[str, list[tuple[int, float]]], keys: list[str]) -> None:
    """Each key has exactly one point per step it was logged at."""
    for key in keys:
        steps = [s for s, _ in hist[key]]
        assert len(steps) == len(set(steps)), f"{key}: logged twice at a step: {steps}"
