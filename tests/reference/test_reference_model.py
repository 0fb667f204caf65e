"""Our OLMo 2 model against OLMo-core's own transformer (reordered norm + QK-norm): logits with
mapped weights, parameter counts, and every preset shape against OLMo-core's olmo2_* builders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("olmo_core")

from model import build, model_preset  # noqa: E402
from model.presets import SIZES  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from tests.reference.olmo_core_models import olmo_core_config, olmo_core_from_ours  # noqa: E402

TINY = dataclasses.replace(model_preset("olmo2-tiny"), vocab_size=512, d_model=128, n_layers=3,
                           n_heads=4, mlp_hidden=320, max_seq_len=64, attention="sdpa")


@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_logits_equal_olmo_core(kv_heads, dtype, tol):
    cfg = dataclasses.replace(TINY, n_kv_heads=kv_heads)
    ours = build(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # norm scales away from 1, so a mis-mapped scale would show
        for p in ours.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    ref = olmo_core_from_ours(ours, dtype).eval()
    ours = ours.to(dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        got, want = ours(ids), ref(ids)
    assert got.shape == want.shape
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < tol, err
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())


OLMO_CORE_SIZES = [s for s in SIZES if s not in ("tiny", "small")]


@pytest.mark.parametrize("size", OLMO_CORE_SIZES)
def test_every_preset_shape_is_olmo_cores(size):
    from olmo_core.nn.transformer import TransformerConfig

    for recipe in ("olmo2", "olmo0424"):
        cfg = model_preset(f"{recipe}-{size}")
        ref = getattr(TransformerConfig, f"olmo2_{size}")(vocab_size=cfg.vocab_size)
        att = ref.block.sequence_mixer
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden) == (
            ref.d_model, ref.n_layers, att.n_heads, att.n_kv_heads, ref.block.feed_forward.hidden_size)
    olmo2 = model_preset(f"olmo2-{size}")
    assert (olmo2.rope_theta, olmo2.norm_eps) == (att.rope.theta, ref.block.layer_norm.eps)
    with torch.device("meta"):
        assert Transformer(olmo2).num_params() == ref.num_params


def test_unset_mlp_hidden_is_olmo_cores_rounding():
    from olmo_core.nn.transformer import TransformerConfig

    for d in (128, 256, 384, 640, 768, 1000, 4096):
        ref = TransformerConfig.llama_like(d_model=d, vocab_size=256, n_layers=1, n_heads=4)
        mine = dataclasses.replace(TINY, d_model=d, mlp_hidden=None)
        assert mine.hidden == ref.block.feed_forward.hidden_size, d


def test_reference_config_builder_matches_our_shape():
    ref = olmo_core_config(TINY)
    assert (ref.d_model, ref.n_layers, ref.block.feed_forward.hidden_size) == (128, 3, 320)
