"""Layer maps of foreign decoders: Hugging Face Llama-style models (`model.layers`: Llama,
OLMo 2, Qwen2, Mistral, ...), GPT-2 and nanoGPT (`transformer.h`), next to ours.

These maps split each block's parameters into attention / MLP / norms for the per-part grad
norms. The HF ones also carry a `trunk` and `qk` (`stability.hooks.hf_attention`) for the
attention-logit and entropy probe; nanoGPT's has none, so that probe is skipped for it (the hook
says so in one line).
"""

from __future__ import annotations

from torch import nn

from stability.hooks.hf_attention import decoder_qk, gpt2_qk, trunk_of
from stability.probes.layer_map import KNOWN, LayerMap, layer_map_for

HF_DECODER = LayerMap("hf.decoder (model.layers)", blocks="model.layers", attn="self_attn",
                      mlp="mlp", embed=("model.embed_tokens",), head=("lm_head",),
                      n_heads="config.num_attention_heads",
                      trunk=trunk_of("model.layers", "self_attn"), qk=decoder_qk)
HF_GPT2 = LayerMap("hf.gpt2 (transformer.h)", blocks="transformer.h", attn="attn", mlp="mlp",
                   embed=("transformer.wte", "transformer.wpe"), head=("lm_head",),
                   n_heads="config.num_attention_heads",  # HF's name: nanoGPT's config has none
                   trunk=trunk_of("transformer.h", "attn"), qk=gpt2_qk)
NANOGPT = LayerMap("nanogpt (transformer.h)", blocks="transformer.h", attn="attn", mlp="mlp",
                   embed=("transformer.wte", "transformer.wpe"), head=("lm_head",),
                   n_heads="config.n_head")

# Ours first, then the foreign families (HF GPT-2 before nanoGPT: the same module paths).
HOOK_MAPS: tuple[LayerMap, ...] = (*KNOWN, HF_DECODER, HF_GPT2, NANOGPT)


def find_layer_map(model: nn.Module, layer_map: LayerMap | None = None) -> LayerMap:
    """`layer_map`, else the first known map that describes `model` (ValueError when none)."""
    return layer_map or layer_map_for(model, HOOK_MAPS)


def has_attention_probe(layer_map: LayerMap) -> bool:
    return layer_map.trunk is not None and layer_map.qk is not None
