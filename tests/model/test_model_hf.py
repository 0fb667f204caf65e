"""Parity with HF transformers `Olmo2ForCausalLM`, both directions."""

import dataclasses

import pytest
import torch

from model import ConfigError, build, model_preset
from model.hf_interop import from_hf, to_hf

transformers = pytest.importorskip("transformers")


def _hf_model(rope_theta: float, tie: bool = False, kv_heads: int = 2, **extra):
    cfg = transformers.Olmo2Config(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, intermediate_size=160, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=tie, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        attn_implementation="eager", **extra,
    )  # fmt: skip
    hf = transformers.Olmo2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1, generator=g)
            else:  # norm weights: non-unit
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return hf


@pytest.mark.parametrize(("rope_theta", "tie", "kv_heads"), [(1e4, False, 2), (5e5, True, 4)])
def test_from_hf_and_back(rope_theta, tie, kv_heads, tmp_path):
    hf = _hf_model(rope_theta, tie, kv_heads)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        expected = hf(ids).logits
        ours = from_hf(hf)
        assert ours.cfg.rope_theta == rope_theta and ours.cfg.kv_heads == kv_heads
        assert ours.cfg.tie_embeddings == tie and ours.cfg.norm_eps == 1e-6
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)

        back = to_hf(ours, attn_implementation="eager")
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)

        hf.save_pretrained(tmp_path)
        loaded = from_hf(str(tmp_path))
        torch.testing.assert_close(loaded(ids), expected, atol=1e-5, rtol=1e-5)


def test_to_hf_of_our_random_model():
    cfg = dataclasses.replace(model_preset("olmo2-tiny"), n_layers=2, n_kv_heads=2)
    ours = build(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in ours.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
        ids = torch.randint(0, cfg.vocab_size, (2, 32))
        hf = to_hf(ours, attn_implementation="eager")
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)
        assert hf.config.rope_parameters["rope_theta"] == cfg.rope_theta


def test_to_hf_rejects_other_architectures():
    with pytest.raises(ConfigError, match=r"model\.norm_type"):
        to_hf(build(model_preset("olmo0424-tiny")))
    cfg = dataclasses.replace(model_preset("olmo2-tiny"), qk_norm="per_head")
    with pytest.raises(ConfigError, match=r"model\.qk_norm"):
        to_hf(build(cfg))


def test_from_hf_rejects_attention_bias():
    hf = _hf_model(1e4, attention_bias=True)
    with pytest.raises(ConfigError, match="attention_bias"):
        from_hf(hf)
