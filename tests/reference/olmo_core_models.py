"""OLMo-core (the reference, `ai2-olmo-core`) and old OLMo (`ai2-olmo`) models built beside ours,
and the weight names that map one onto the other. Imported only by tests that need them."""

from __future__ import annotations

import logging

import torch

from model import ModelConfig, Transformer

logging.getLogger("olmo_core").setLevel(logging.ERROR)

# Ours (fused q/k/v and gate/up as their views) -> OLMo-core's parameter, per block.
BLOCK_NAMES = {
    "attn.q_weight": "attention.w_q.weight",
    "attn.k_weight": "attention.w_k.weight",
    "attn.v_weight": "attention.w_v.weight",
    "attn.o_proj.weight": "attention.w_out.weight",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "attn_norm.weight": "attention_norm.weight",
    "mlp.gate_weight": "feed_forward.w1.weight",
    "mlp.up_weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp_norm.weight": "feed_forward_norm.weight",
}
TOP_NAMES = {"embed.weight": "embeddings.weight", "final_norm.weight": "lm_head.norm.weight",
             "lm_head.weight": "lm_head.w_out.weight"}


def olmo_core_names(n_layers: int) -> dict[str, str]:
    names = dict(TOP_NAMES)
    for i in range(n_layers):
        names.update({f"blocks.{i}.{ours}": f"blocks.{i}.{ref}" for ours, ref in BLOCK_NAMES.items()})
    return names


def tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A parameter or a view (e.g. `blocks.0.attn.q_weight`) by its dotted name."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr)


def olmo_core_config(cfg: ModelConfig, init: str = "normal", full_precision: bool = True):
    """OLMo-core's OLMo 2 transformer config with `cfg`'s shape (reordered norm, QK-norm).

    `full_precision` (OLMo-core's default) runs RoPE and the RMSNorms in fp32 whatever the
    dtype; an fp64 comparison turns it off so that both sides compute in fp64 (RoPE with the
    same fp32 tables)."""
    from olmo_core.nn.feed_forward import FeedForwardConfig
    from olmo_core.nn.transformer import InitMethod, TransformerConfig

    ref = TransformerConfig.llama_like(
        d_model=cfg.d_model, vocab_size=cfg.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads, block_name="reordered_norm", qk_norm=True,
        rope_theta=int(cfg.rope_theta), layer_norm_eps=cfg.norm_eps,
        rope_full_precision=full_precision,
        feed_forward=FeedForwardConfig(hidden_size=cfg.hidden, bias=False))
    for norm in (ref.block.layer_norm, ref.block.sequence_mixer.qk_norm, ref.lm_head.layer_norm):
        norm.full_precision = full_precision
    ref.init_method = InitMethod(init)
    ref.init_std = cfg.init_std
    assert ref.block.feed_forward.hidden_size == cfg.hidden
    return ref


def olmo_core_from_ours(ours: Transformer, dtype: torch.dtype = torch.float32):
    """OLMo-core's model of `ours.cfg` carrying a copy of our weights."""
    full = dtype != torch.float64
    ref = olmo_core_config(ours.cfg, full_precision=full).build(init_device="cpu").to(dtype)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, ref_name in olmo_core_names(ours.cfg.n_layers).items():
            params[ref_name].copy_(tensor(ours, name))
    return ref


def old_olmo(cfg: ModelConfig, init: str, seed: int = 0):
    """Old OLMo's (`olmo.model.OLMo`, 0.6.0) model of `cfg`'s shape, initialised with `init`."""
    from olmo.config import ModelConfig as OldConfig
    from olmo.model import OLMo

    torch.manual_seed(seed)
    old = OldConfig(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
        mlp_hidden_size=2 * cfg.hidden, vocab_size=cfg.vocab_size, embedding_size=cfg.vocab_size,
        weight_tying=False, include_bias=False, rope=True, activation_type="swiglu",
        layer_norm_type="rms", attention_layer_norm=True, norm_after=True,
        init_fn=init, init_std=cfg.init_std, init_cutoff_factor=cfg.init_cutoff,
        max_sequence_length=cfg.max_seq_len, init_device="cpu")
    return OLMo(old)
