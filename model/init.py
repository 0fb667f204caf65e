"""Weight initialisation schemes; `init_plan` is the one source of truth for every tensor's draw.

A scheme that bears a reference's name draws every tensor as that reference does (tested against
the reference itself in tests/reference/). Per scheme (layer = 0-based block index, d = d_model,
L = n_layers, s = init_std, h = the SwiGLU hidden width; "trunc" = truncated at +-init_cutoff std):

    normal         OLMo-core / old OLMo `normal`: every matrix (embeddings, LM head) N(0, s) trunc
    mitchell       old OLMo `mitchell`: embed, q/k/v, gate/up, LM head 1/sqrt(d);
                   o_proj 1/sqrt(2 d (layer+1)); down_proj 1/sqrt(2 h (layer+1)); all trunc
    full_megatron  old OLMo `full_megatron`: s everywhere; o_proj, down_proj s/sqrt(2 L);
                   LM head 1/sqrt(d); all trunc
    llama          OLMo-core `llama`: embed N(0, 1) (not truncated); q/k/v, gate s;
                   o_proj, up, down s/sqrt(2 L); LM head 1/sqrt(d) trunc
    llama_depth    OLMo-core `llama_depth`: as llama with s/sqrt(2 (layer+1))
    fan_in         OLMo-core `fan_in`: each matrix 1/sqrt(its fan-in) trunc (o_proj
                   1/sqrt(n_heads hd), down_proj 1/sqrt(h)); embed N(0, 1) (not truncated);
                   LM head 1/sqrt(d) trunc
    megatron       ours (Megatron-LM's scaled init): s everywhere; o_proj, down_proj s/sqrt(2 L)
    megatron_depth ours: as megatron with s/sqrt(2 (layer+1))

q/k/v and gate/up are fused matrices (`attn.qkv_proj`, `mlp.gate_up_proj`); their parts are
addressed by the modules' views (`attn.q_weight`, ..., `mlp.up_weight`) and may differ in std.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.config import USES_INIT_STD, ConfigError, ModelConfig
from model.rope import RotaryEmbedding

# Fused parameters and the views that split them, in row order.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "attn.qkv_proj.weight": ("attn.q_weight", "attn.k_weight", "attn.v_weight"),
    "mlp.gate_up_proj.weight": ("mlp.gate_weight", "mlp.up_weight"),
}
BLOCK_TENSORS = ("attn.q_weight", "attn.k_weight", "attn.v_weight", "attn.o_proj.weight",
                 "mlp.gate_weight", "mlp.up_weight", "mlp.down_proj.weight")
# The blocks' output projections, which the depth-scaled schemes shrink.
OUT_PROJ = ("attn.o_proj.weight", "mlp.down_proj.weight")


@dataclass(frozen=True)
class Draw:
    """How one tensor is drawn: N(0, std^2), truncated at +-`init_cutoff` std unless not."""

    std: float
    truncated: bool = True


def _fan_in(cfg: ModelConfig, tensor: str) -> int:
    if tensor == "attn.o_proj.weight":
        return cfg.n_heads * cfg.head_dim
    return cfg.hidden if tensor == "mlp.down_proj.weight" else cfg.d_model


def _depth_scaled(scaled: tuple[str, ...], per_layer: bool) -> Callable[[ModelConfig, str, int], float]:
    """s, or s/sqrt(2 L) (s/sqrt(2 (layer+1)) with `per_layer`) for the tensors in `scaled`."""

    def std(cfg: ModelConfig, tensor: str, layer: int) -> float:
        if tensor not in scaled:
            return cfg.init_std
        return cfg.init_std / math.sqrt(2 * (layer + 1 if per_layer else cfg.n_layers))

    return std


def _mitchell(cfg: ModelConfig, tensor: str, layer: int) -> float:
    if tensor == "attn.o_proj.weight":
        return 1.0 / math.sqrt(2 * cfg.d_model * (layer + 1))
    if tensor == "mlp.down_proj.weight":
        return 1.0 / math.sqrt(2 * cfg.hidden * (layer + 1))
    return cfg.d_model**-0.5


_LLAMA_SCALED = ("attn.o_proj.weight", "mlp.up_weight", "mlp.down_proj.weight")
_INV_SQRT_D = lambda cfg: Draw(cfg.d_model**-0.5)  # noqa: E731
_INIT_STD = lambda cfg: Draw(cfg.init_std)  # noqa: E731
_UNIT_NORMAL = lambda cfg: Draw(1.0, truncated=False)  # noqa: E731


@dataclass(frozen=True)
class Scheme:
    """One init scheme: the block tensors' std, and the embedding and LM-head draws."""

    block: Callable[[ModelConfig, str, int], float]
    embed: Callable[[ModelConfig], Draw]
    head: Callable[[ModelConfig], Draw]


SCHEMES: dict[str, Scheme] = {
    "normal": Scheme(lambda cfg, t, i: cfg.init_std, _INIT_STD, _INIT_STD),
    "mitchell": Scheme(_mitchell, _INV_SQRT_D, _INV_SQRT_D),
    "full_megatron": Scheme(_depth_scaled(OUT_PROJ, False), _INIT_STD, _INV_SQRT_D),
    "llama": Scheme(_depth_scaled(_LLAMA_SCALED, False), _UNIT_NORMAL, _INV_SQRT_D),
    "llama_depth": Scheme(_depth_scaled(_LLAMA_SCALED, True), _UNIT_NORMAL, _INV_SQRT_D),
    "fan_in": Scheme(lambda cfg, t, i: _fan_in(cfg, t) ** -0.5, _UNIT_NORMAL, _INV_SQRT_D),
    "megatron": Scheme(_depth_scaled(OUT_PROJ, False), _INIT_STD, _INIT_STD),
    "megatron_depth": Scheme(_depth_scaled(OUT_PROJ, True), _INIT_STD, _INIT_STD),
}
assert tuple(SCHEMES) == ModelConfig.CHOICES["init"] and set(USES_INIT_STD) <= set(SCHEMES)


def init_plan(cfg: ModelConfig) -> dict[str, Draw]:
    """The draw of every weight tensor of `Transformer(cfg)`, by name.

    Names are parameter names, except that fused matrices appear as their parts (views):
    `blocks.{i}.attn.q_weight`, ..., `blocks.{i}.mlp.up_weight`. Norm scales are absent (set to
    1); `lm_head.weight` is absent when tied to the embeddings.
    """
    if cfg.init not in SCHEMES:
        raise ConfigError(f"model.init: {cfg.init!r} is not one of ({', '.join(SCHEMES)})")
    scheme = SCHEMES[cfg.init]
    plan = {"embed.weight": scheme.embed(cfg)}
    for i in range(cfg.n_layers):
        for tensor in BLOCK_TENSORS:
            plan[f"blocks.{i}.{tensor}"] = Draw(scheme.block(cfg, tensor, i))
    if not cfg.tie_embeddings:
        plan["lm_head.weight"] = scheme.head(cfg)
    return plan


def expected_std(cfg: ModelConfig) -> dict[str, float]:
    """The init std of every weight tensor (names as `init_plan`)."""
    return {name: draw.std for name, draw in init_plan(cfg).items()}


def _draw(target: torch.Tensor, draws: list[tuple[int, Draw]], cutoff: float,
          generator: torch.Generator | None) -> None:
    """Fill `target` whose consecutive row blocks (rows, draw) share one call to the RNG."""
    stds = {d.std for _, d in draws}
    if not draws[0][1].truncated:
        nn.init.normal_(target, 0.0, draws[0][1].std, generator=generator)
    elif len(stds) == 1:
        std = draws[0][1].std
        nn.init.trunc_normal_(target, 0.0, std, -cutoff * std, cutoff * std, generator=generator)
    else:  # standard draws for the whole matrix, each part scaled by its own std
        nn.init.trunc_normal_(target, 0.0, 1.0, -cutoff, cutoff, generator=generator)
        for rows, draw in zip(target.split([r for r, _ in draws]), (d for _, d in draws)):
            rows.mul_(draw.std)


def _row_draws(model: nn.Module, plan: dict[str, Draw], name: str) -> list[tuple[int, Draw]] | None:
    """[(rows, draw)] of parameter `name` (one entry unless fused); None if not in the plan."""
    if name in plan:
        return [(0, plan[name])]
    block, _, local = name.partition(".")[2].partition(".")  # "blocks.3.attn..." -> "3", "attn..."
    if not name.startswith("blocks.") or local not in FUSED_PARTS:
        return None
    prefix = f"blocks.{block}"
    parts = []
    for view in FUSED_PARTS[local]:
        module, _, attr = view.rpartition(".")
        rows = getattr(model.get_submodule(f"{prefix}.{module}"), attr).shape[0]
        parts.append((rows, plan[f"{prefix}.{view}"]))
    return parts


@torch.no_grad()
def init_weights(
    model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None
) -> None:
    """Initialise `model` (a `Transformer`) in place per `cfg.init` (see module docstring).

    One RNG call per parameter, in `named_parameters()` order, so a generator seeded alike gives
    the same weights, and two schemes that differ only in std give the same standard draws
    scaled. A CPU generator with a model elsewhere draws on CPU and copies (device-agnostic).
    """
    plan = init_plan(cfg)
    for name, p in model.named_parameters():
        draws = _row_draws(model, plan, name)
        if draws is None:
            if p.ndim != 1:
                raise ValueError(f"init_weights: no init rule for parameter {name!r}")
            nn.init.ones_(p)  # norm scales
            continue
        target = p
        if generator is not None and generator.device.type != p.device.type:
            target = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
        _draw(target, draws, cfg.init_cutoff, generator)
        if target is not p:
            p.copy_(target)
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_tables()
