"""The transformer of the stability study: config, construction, init, presets, HF interop.

Only the config is imported eagerly: everything else loads on first use (PEP 562), so that the
commands that need no model (`stability --help`, `grid plan`, `report`, ...) never import torch
through `from model.config import ConfigError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    import torch

    from model.attention_backends import check_attention_backend, resolve_attention_backend
    from model.init import expected_std, init_weights
    from model.presets import MODEL_PRESETS, RECIPE_KNOBS, model_preset, recipe_of
    from model.transformer import Transformer

_LAZY = {
    "check_attention_backend": "model.attention_backends",
    "resolve_attention_backend": "model.attention_backends",
    "expected_std": "model.init",
    "init_weights": "model.init",
    "MODEL_PRESETS": "model.presets",
    "RECIPE_KNOBS": "model.presets",
    "model_preset": "model.presets",
    "recipe_of": "model.presets",
    "Transformer": "model.transformer",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def build(
    cfg: ModelConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Validate `cfg`, construct the model (directly on `device` if given) and initialise it.

    With a `device`, also checks that `cfg.attention` can run there.
    """
    import contextlib

    import torch

    from model.attention_backends import check_attention_backend
    from model.init import init_weights
    from model.transformer import Transformer

    cfg.validate()
    if device is not None:
        device = torch.device(device)
        check_attention_backend(cfg.attention, device.type)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = Transformer(cfg)
    init_weights(model, cfg, generator)
    return model
