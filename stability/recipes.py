"""Which recipe a run follows: `olmo2`, `olmo0424` or `custom`, and the knobs where it deviates
from the closest one (the `recipe`, `base_recipe` and `deviations` tags)."""

from __future__ import annotations

from typing import Any

from model.config import USES_INIT_STD
from model.presets import RECIPE_KNOBS, recipe_of
from stability.config import RunConfig
from stability.presets import RECIPE_RUN_KNOBS


def recipe_deviations(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """(the recipe `cfg` is closest to, {dotted key: value} of the recipe knobs where it differs):
    what a user filters runs on (`base_recipe`, `deviations` tags). Ties go to `olmo2`. init_std
    only counts for inits that read it."""
    best: tuple[str, dict[str, Any]] | None = None
    for recipe, model_knobs in RECIPE_KNOBS.items():
        knobs = {f"model.{k}": v for k, v in model_knobs.items()
                 if k != "init_std" or cfg.model.init in USES_INIT_STD}
        knobs.update({f"{section}.{k}": v for section, table in RECIPE_RUN_KNOBS[recipe].items()
                      for k, v in table.items()})
        found = {}
        for key, want in knobs.items():
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if value != want:
                found[key] = value
        if best is None or len(found) < len(best[1]):
            best = (recipe, found)
    assert best is not None
    return best


def run_recipe_of(cfg: RunConfig) -> str:
    """`olmo2`, `olmo0424` or `custom`: which recipe every model and training knob matches."""
    recipe = recipe_of(cfg.model)
    if recipe == "custom":
        return recipe
    for section, knobs in RECIPE_RUN_KNOBS[recipe].items():
        table = getattr(cfg, section)
        if any(getattr(table, k) != v for k, v in knobs.items()):
            return "custom"
    return recipe
