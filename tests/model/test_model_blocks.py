"""Each block placement x norm type against a hand-written forward of one block."""

import dataclasses

import pytest
import torch
from model_reference import randomize_norms, ref_block, ref_mlp

from model import ModelConfig
from model.blocks import Block, build_block
from model.mlp import SwiGLU

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, mlp_hidden=48, max_seq_len=32,
                  attention="eager")


def _block(cfg: ModelConfig) -> Block:
    block = build_block(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2, generator=g)
    randomize_norms(block)
    return block


@pytest.mark.parametrize("norm_type", ["rms", "layernorm", "layernorm_nonparam"])
@pytest.mark.parametrize("placement", ["pre_norm", "post_norm", "reordered_norm", "peri_norm"])
def test_block_matches_reference(placement, norm_type):
    cfg = dataclasses.replace(CFG, block=placement, norm_type=norm_type, qk_norm="full")
    block = _block(cfg)
    torch.manual_seed(1)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(block(x).double(), ref_block(x, block, cfg), atol=1e-5, rtol=1e-5)
    doc_ids = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    torch.testing.assert_close(
        block(x, doc_ids).double(), ref_block(x, block, cfg, doc_ids), atol=1e-5, rtol=1e-5
    )


def test_block_norm_names():
    names = {n for n, _ in _block(dataclasses.replace(CFG, block="peri_norm")).named_modules()}
    assert {"attn", "mlp", "attn_norm", "mlp_norm", "attn_in_norm", "mlp_in_norm"} <= names
    names = {n for n, _ in _block(CFG).named_modules()}
    assert {"attn_norm", "mlp_norm"} <= names and "attn_in_norm" not in names


def test_swiglu_matches_reference():
    cfg = dataclasses.replace(CFG, mlp_hidden=None)
    mlp = SwiGLU(cfg)
    assert mlp.gate_weight.shape == (cfg.hidden, 32) and mlp.down_proj.bias is None
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x).double(), ref_mlp(x, mlp), atol=1e-6, rtol=1e-5)

