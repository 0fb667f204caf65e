"""`model.size` (closed form, no model built) against the built model, for every combination of
norm type, norm placement, QK-norm, grouped-query attention, tying and the default MLP width."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from model import ModelConfig, Transformer
from model.size import flops_per_token, param_count

BASE = ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, mlp_hidden=96, max_seq_len=32)
AXES = {
    "norm_type": ModelConfig.CHOICES["norm_type"],
    "block": ModelConfig.CHOICES["block"],
    "qk_norm": ModelConfig.CHOICES["qk_norm"],
    "n_kv_heads": (None, 2, 1),
    "tie_embeddings": (False, True),
    "mlp_hidden": (96, None),
}
COMBOS = [dict(zip(AXES, values)) for values in itertools.product(*AXES.values())]


@pytest.mark.parametrize("changes", COMBOS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_closed_form_equals_the_built_model(changes):
    cfg = dataclasses.replace(BASE, **changes)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = Transformer(cfg)
    assert param_count(cfg) == model.num_params()
    assert param_count(cfg, exclude_embeddings=True) == model.num_params(exclude_embeddings=True)
    head = model.lm_head.weight.numel() if cfg.tie_embeddings else 0
    assert flops_per_token(cfg, 16) == 6 * (model.num_params(exclude_embeddings=True) + head) \
        + 6 * cfg.n_layers * cfg.d_model * 16
    assert model.flops_per_token(16) == flops_per_token(cfg, 16)
