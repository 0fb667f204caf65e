"""The transformer of the stability study: config, construction, init, presets, HF interop."""

from __future__ import annotations

import contextlib

import torch

from model.attention_backends import check_attention_backend, resolve_attention_backend
from model.config import ConfigError, ModelConfig
from model.init import expected_std, init_weights
from model.presets import MODEL_PRESETS, RECIPE_KNOBS, model_preset, recipe_of
from model.transformer import Transformer

__all__ = [
    "MODEL_PRESETS",
    "RECIPE_KNOBS",
    "ConfigError",
    "ModelConfig",
    "Transformer",
    "build",
    "check_attention_backend",
    "expected_std",
    "init_weights",
    "model_preset",
    "recipe_of",
    "resolve_attention_backend",
]


def build(
    cfg: ModelConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Validate `cfg`, construct the model (directly on `device` if given) and initialise it.

    With a `device`, also checks that `cfg.attention` can run there.
    """
    cfg.validate()
    if device is not None:
        device = torch.device(device)
        check_attention_backend(cfg.attention, device.type)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = Transformer(cfg)
    init_weights(model, cfg, generator)
    return model
