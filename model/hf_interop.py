"""Conversion to and from HF transformers `Olmo2ForCausalLM` (transformers imported lazily).

Name map (ours <- HF), per layer i:
    embed.weight                      model.embed_tokens.weight
    blocks.i.attn.qkv_proj            model.layers.i.self_attn.{q,k,v}_proj (concatenated rows)
    blocks.i.attn.o_proj              model.layers.i.self_attn.o_proj
    blocks.i.attn.{q,k}_norm          model.layers.i.self_attn.{q,k}_norm
    blocks.i.mlp.gate_up_proj         model.layers.i.mlp.{gate,up}_proj (concatenated rows)
    blocks.i.mlp.down_proj            model.layers.i.mlp.down_proj
    blocks.i.attn_norm                model.layers.i.post_attention_layernorm
    blocks.i.mlp_norm                 model.layers.i.post_feedforward_layernorm
    final_norm.weight                 model.norm.weight
    lm_head.weight                    lm_head.weight
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from model.config import ConfigError, ModelConfig
from model.transformer import Transformer

# The architecture an Olmo2ForCausalLM has (besides shapes).
OLMO2_ARCH = {"norm_type": "rms", "block": "reordered_norm", "qk_norm": "full", "clip_qkv": None}

# Our block module -> the HF modules whose weights it holds (several: concatenated by rows).
_BLOCK_MAP = {
    "attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.o_proj": ("self_attn.o_proj",),
    "attn.q_norm": ("self_attn.q_norm",),
    "attn.k_norm": ("self_attn.k_norm",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
    "attn_norm": ("post_attention_layernorm",),
    "mlp_norm": ("post_feedforward_layernorm",),
}


def hf_names(ours: str) -> tuple[str, ...]:
    """HF parameter name(s) of our parameter `ours` (e.g. "blocks.0.attn.qkv_proj.weight" ->
    the q, k and v projections of HF layer 0, in row order)."""
    if ours.startswith("blocks."):
        _, i, rest = ours.split(".", 2)
        module, leaf = rest.rsplit(".", 1)
        return tuple(f"model.layers.{i}.{hf}.{leaf}" for hf in _BLOCK_MAP[module])
    top = {"embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head"}
    module, leaf = ours.rsplit(".", 1)
    return (f"{top[module]}.{leaf}",)


def _split_sizes(cfg: ModelConfig, ours: str) -> list[int]:
    if ".qkv_proj." in ours:
        hd = cfg.head_dim
        return [cfg.n_heads * hd, cfg.kv_heads * hd, cfg.kv_heads * hd]
    return [cfg.hidden, cfg.hidden]  # gate_up_proj


def _rope_theta(hf_cfg: Any) -> float:
    params = getattr(hf_cfg, "rope_parameters", None)  # transformers >= 5
    if params:
        if params.get("rope_type", "default") != "default":
            raise ConfigError(f"hf.rope_parameters: rope_type {params['rope_type']!r} unsupported")
        return float(params["rope_theta"])
    scaling = getattr(hf_cfg, "rope_scaling", None)  # transformers 4.x
    if scaling:
        raise ConfigError(f"hf.rope_scaling: {scaling!r} unsupported (plain RoPE only)")
    return float(hf_cfg.rope_theta)


def config_from_hf(hf_cfg: Any) -> ModelConfig:
    """`ModelConfig` (OLMo 2 architecture) of an HF `Olmo2Config`."""
    if getattr(hf_cfg, "attention_bias", False):
        raise ConfigError("hf.attention_bias: must be False (our model has no biases)")
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise ConfigError(f"hf.hidden_act: {hf_cfg.hidden_act!r} unsupported (allowed: silu)")
    n_heads = hf_cfg.num_attention_heads
    head_dim = getattr(hf_cfg, "head_dim", None)
    if head_dim is not None and head_dim * n_heads != hf_cfg.hidden_size:
        raise ConfigError(f"hf.head_dim: {head_dim} * {n_heads} heads != {hf_cfg.hidden_size}")
    kv = getattr(hf_cfg, "num_key_value_heads", None)
    cfg = ModelConfig(
        vocab_size=hf_cfg.vocab_size,
        d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=None if kv in (None, n_heads) else kv,
        mlp_hidden=hf_cfg.intermediate_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=_rope_theta(hf_cfg),
        norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
        init_std=getattr(hf_cfg, "initializer_range", 0.02),
        **OLMO2_ARCH,
    )
    cfg.validate()
    return cfg


def from_hf(model_or_path: Any) -> Transformer:
    """Our `Transformer` with the weights (and dtype) of an HF `Olmo2ForCausalLM` or saved dir."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import Olmo2ForCausalLM

        model_or_path = Olmo2ForCausalLM.from_pretrained(model_or_path)
    hf = model_or_path
    cfg = config_from_hf(hf.config)
    hf_state = hf.state_dict()
    weight = hf_state["model.embed_tokens.weight"]
    with torch.device(weight.device):
        ours = Transformer(cfg).to(weight.dtype)
    state = {name: torch.cat([hf_state[n] for n in hf_names(name)])
             for name in ours.state_dict()}
    ours.load_state_dict(state, strict=True)
    ours.rope.reset_tables()
    return ours


def check_olmo2_arch(cfg: ModelConfig) -> None:
    """Raise `ConfigError` naming the first key where `cfg` is not the OLMo 2 architecture."""
    for key, value in OLMO2_ARCH.items():
        if getattr(cfg, key) != value:
            raise ConfigError(
                f"model.{key}: {getattr(cfg, key)!r} has no Olmo2ForCausalLM equivalent "
                f"(needs {value!r})"
            )


def to_hf(model: Transformer, attn_implementation: str | None = None) -> Any:
    """An HF `Olmo2ForCausalLM` (eval mode) with our weights; OLMo 2 architecture only.

    `attn_implementation` ("eager", "sdpa", ...) is passed to the HF config when given.
    """
    from transformers import Olmo2Config, Olmo2ForCausalLM

    cfg = model.cfg
    check_olmo2_arch(cfg)
    if "rope_parameters" in inspect.signature(Olmo2Config.__init__).parameters:  # >= 5
        rope: dict = {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}
    else:
        rope = {"rope_theta": cfg.rope_theta}
    hf_cfg = Olmo2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        initializer_range=cfg.init_std,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        **rope,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )
    weight = model.embed.weight
    hf = Olmo2ForCausalLM(hf_cfg).to(device=weight.device, dtype=weight.dtype)
    # a tied model's state_dict lists lm_head.weight too, as HF's does
    hf_state = {}
    for name, tensor in model.state_dict().items():
        names = hf_names(name)
        parts = tensor.split(_split_sizes(cfg, name)) if len(names) > 1 else (tensor,)
        hf_state.update(zip(names, parts))
    hf.load_state_dict(hf_state, strict=True)
    return hf.eval()
