"""Grid specs: a TOML file of paired ablation arms, resolved into one `RunConfig` per cell.

A spec (files in `ablations/grids/`)::

    name = "quick"            # experiment / grid name, [A-Za-z0-9._-]+ (required)
    description = "..."       # optional
    preset = "olmo2-small"    # optional base preset
    baseline = "olmo2"        # the arm that is the final recipe (required, must be an arm)
    seeds = [0, 1]            # required: distinct integers >= 0
    lrs = [3e-3, 1e-2]        # optional: optim.lr sweep (absent: the resolved config's lr)
    [base]                    # optional: RunConfig overrides for every arm
    train.steps = 300
    [budget]                  # optional: steps = N or tokens = N
    steps = 300
    [resources]               # optional, per cell: cpus, gpus, ranks, mem_gb, time_min
    cpus = 1                  # CPU threads of the cell (all its ranks together)
    gpus = 0                  # GPUs of the cell; more than one: one data-parallel rank on each
    ranks = 1                 # data-parallel processes (torchrun, FSDP2); default max(1, gpus)
    [arms.olmo2]              # an arm: RunConfig overrides (may be empty)
    [arms.no_qk_norm]
    model.qk_norm = "none"

Cells = arms x seeds x lrs, ordered by arm (file order), then seed, then lr. The config of a cell
is preset <- base <- arm <- {train.seed, optim.lr, train.steps from the budget}, with
`tracking.experiment = name` and `tracking.run_name = "{name}/{arm}/s{seed}/lr{lr:g}"`. Seed s
gives every arm the same data order and init stream (the trainer derives both from
`train.seed`). A cell's id is the content hash of its resolved config
(`stability.config.config_hash`, 12 hex).

Everything is checked when the spec is loaded, before any run starts: each problem raises a
`ConfigError` with one line naming its place in the file (`arms.x.model.qk_norm: ...`,
`lrs[1]: ...`, `budget: ...`); `SPEC` stands for the spec file itself.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from model.config import ConfigError
from stability.config import RunConfig, apply_table, config_hash, parse_override, read_toml, run_preset

__all__ = ["SPEC_PLACE", "Cell", "GridSpec", "load_spec", "parse_spec", "GRIDS_DIR", "bundled_specs"]

SPEC_PLACE = "SPEC"  # how messages about the file as a whole name it (the CLI's argument)
GRIDS_DIR = Path(__file__).resolve().parent / "grids"



@dataclass
class Budget:
    """`[budget]`: the steps of every cell, or the tokens they are derived from."""

    steps: int | None = None
    tokens: int | None = None

    def validate(self, section: str = "budget") -> None:
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for key, value in given.items():
            if not 1 <= value <= INT64_MAX:
                raise ConfigError(f"{section}.{key}: expected a positive integer (64-bit), "
                                  f"got {_short(value)}")
        if len(given) != 1:
            raise ConfigError(f"{section}: give steps or tokens, not both" if given
                              else f"{section}: give steps = N or tokens = N (or leave [budget] out)")


@dataclass
class Resources:
    """`[resources]`: what one cell may use (threads, GPUs, data-parallel ranks, Slurm limits)."""

    cpus: int | None = None
    gpus: int | None = None
    ranks: int | None = None
    mem_gb: float | None = None
    time_min: float | None = None

    BOUNDS: ClassVar[dict[str, tuple[float, bool]]] = {  # lower bound, inclusive
        "cpus": (1, True), "gpus": (0, True), "ranks": (1, True), "mem_gb": (0, False),
        "time_min": (0, False)}

    def validate(self, section: str = "resources") -> None:
        for key, (low, inclusive) in self.BOUNDS.items():
            value = getattr(self, key)
            if value is not None and not (value >= low if inclusive else value > low):
                kind = "an integer" if key in ("cpus", "gpus", "ranks") else "a number"
                raise ConfigError(f"{section}.{key}: expected {kind} {'>=' if inclusive else '>'} "
                                  f"{low}, got {value!r}")
        if self.gpus and self.ranks is not None and self.ranks != self.gpus:
            raise ConfigError(f"{section}.ranks: with GPUs each rank has one, so ranks must equal "
                              f"gpus ({self.gpus}), got {self.ranks}")

    def given(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SpecFile:
    """The keys of a spec file, type-checked by the run config's engine (`apply_table`); `base`
    and the arms are RunConfig overrides, checked when the cells resolve."""

    name: str = ""
    description: str = ""
    preset: str = ""
    baseline: str = ""
    seeds: list[int] = field(default_factory=list)
    lrs: list[float] | None = None
    base: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    resources: Resources = field(default_factory=Resources)
    arms: dict[str, Any] = field(default_factory=dict)


NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
ARM_RE = re.compile(r"[A-Za-z0-9_-]+")  # no dots: places like arms.<arm>.model.x stay unambiguous
CELL_ID_LEN = 12
INT64_MAX = 2**63 - 1  # integer keys (seeds, budget) hold 64-bit values, like the RunConfig's


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _name(key: str) -> str:
    """A key from the file as it goes into a message: quoted when it would break the line."""
    return key if key.isprintable() else repr(key)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Cell:
    """One run of a grid: an arm at one seed and one learning rate."""

    arm: str
    seed: int
    lr: float
    cell_id: str
    config: RunConfig

    @property
    def run_name(self) -> str:
        return self.config.tracking.run_name


@dataclass
class GridSpec:
    """A parsed grid spec (see the module docstring). Build it with `load_spec` or `parse_spec`."""

    name: str
    baseline: str
    seeds: list[int]
    arms: dict[str, dict[str, Any]]
    description: str = ""
    preset: str = ""
    lrs: list[float] | None = None
    base: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    path: str = ""  # the file it was read from ("" = built in memory)

    @property
    def gpus(self) -> int:
        """GPUs per cell (`resources.gpus`, 0 when absent)."""
        return int(self.resources.get("gpus", 0) or 0)

    @property
    def ranks(self) -> int:
        """Data-parallel processes per cell: `resources.ranks`, else one per GPU, else 1."""
        return int(self.resources.get("ranks") or max(1, self.gpus))

    # ------------------------------------------------------------------ resolution

    def _base_config(self) -> RunConfig:
        cfg = run_preset(self.preset) if self.preset else RunConfig()
        apply_table(cfg, self.base, prefix="base.")
        return cfg

    def arm_config(self, arm: str) -> RunConfig:
        """preset <- base <- arm, before the cell's seed, lr and budget (not validated)."""
        if arm not in self.arms:
            raise ConfigError(f"arms: {arm!r} is not an arm (arms: {', '.join(self.arms)})")
        cfg = self._base_config()
        apply_table(cfg, self.arms[arm], prefix=f"arms.{arm}.")
        return cfg

    def steps_for(self, cfg: RunConfig) -> int:
        """train.steps under the budget (`tokens` -> ceil(tokens / (batch * seq)))."""
        if "steps" in self.budget:
            return int(self.budget["steps"])
        per_step = cfg.train.batch_size * cfg.train.seq_len
        if "tokens" in self.budget and per_step > 0:  # else validate() names the bad batch shape
            return max(1, -(-self.budget["tokens"] // per_step))  # exact ceil, any size
        return cfg.train.steps

    def _finish(self, cfg: RunConfig, arm: str, seed: int, lr: float) -> RunConfig:
        cfg.train.seed = seed
        cfg.optim.lr = float(lr)
        cfg.train.steps = self.steps_for(cfg)
        cfg.tracking.experiment = self.name
        cfg.tracking.run_name = f"{self.name}/{arm}/s{seed}/lr{lr:g}"
        return cfg

    def arm_lrs(self, cfg: RunConfig) -> list[float]:
        return list(self.lrs) if self.lrs is not None else [cfg.optim.lr]

    def cells(self) -> list[Cell]:
        """Every cell, validated: arm (file order), then seed, then lr."""
        out: list[Cell] = []
        for arm in self.arms:
            arm_cfg = self.arm_config(arm)
            for seed in self.seeds:
                for lr in self.arm_lrs(arm_cfg):
                    cfg = self._finish(copy.deepcopy(arm_cfg), arm, seed, lr)
                    try:
                        cfg.validate()
                    except ConfigError as exc:
                        raise self._place_error(exc, arm, seed, lr) from None
                    if cfg.train.batch_size % self.ranks:
                        raise ConfigError(f"resources.ranks: {self.ranks} ranks do not divide "
                                          f"train.batch_size {cfg.train.batch_size} of arm {arm!r} "
                                          f"(the batch is global, split across the ranks)")
                    cid = config_hash(cfg)[:CELL_ID_LEN]
                    out.append(Cell(arm=arm, seed=seed, lr=cfg.optim.lr, cell_id=cid, config=cfg))
        self._check_distinct(out)
        return out

    def _place_error(self, exc: ConfigError, arm: str, seed: int, lr: float) -> ConfigError:
        """Prefix a validation error with `base.` when [base] alone has it, else `arms.<arm>.`."""
        base = self._finish(self._base_config(), arm, seed, lr)
        try:
            base.validate()
        except ConfigError as base_exc:
            if str(base_exc) == str(exc):
                return ConfigError(_one_line(f"base.{exc}"))
        return ConfigError(_one_line(f"arms.{arm}.{exc}"))

    def _check_distinct(self, cells: list[Cell]) -> None:
        """Two arms that resolve to the same config would be the same runs: say which."""
        first_arm: dict[tuple[int, float], dict[str, str]] = {}
        for cell in cells:
            seen = first_arm.setdefault((cell.seed, cell.lr), {})
            if cell.cell_id in seen and seen[cell.cell_id] != cell.arm:
                raise ConfigError(
                    f"arms.{cell.arm}: resolves to the same config as arm {seen[cell.cell_id]!r} "
                    f"(an arm must change something)"
                )
            seen.setdefault(cell.cell_id, cell.arm)

    def validate(self) -> None:
        """Resolve and validate every cell (raises `ConfigError` naming the place)."""
        self.cells()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------- parsing


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


# keys the grid itself sets on every cell (an override would be silently replaced)
def _grid_owned(spec_has_lrs: bool, spec_has_budget: bool) -> dict[tuple[str, str], str]:
    owned = {
        ("train", "seed"): "set by the grid's seeds",
        ("tracking", "experiment"): "set from the grid's name",
        ("tracking", "run_name"): "set per cell by the grid",
    }
    if spec_has_lrs:
        owned[("optim", "lr")] = "set per cell by the grid's lrs"
    if spec_has_budget:
        owned[("train", "steps")] = "set by the grid's [budget]"
    return owned


def _check_overrides(place: str, table: dict[str, Any], owned: dict[tuple[str, str], str]) -> None:
    if "preset" in table:
        raise ConfigError(f"{place}.preset: set the preset once, at the top of the spec")
    for (section, key), why in owned.items():
        sub = table.get(section)
        if isinstance(sub, dict) and key in sub:
            raise ConfigError(f"{place}.{section}.{key}: {why}; remove it here")


def parse_spec(data: dict[str, Any], path: str = "") -> GridSpec:
    """Check the parsed TOML of a spec and return the `GridSpec` (cells not yet resolved)."""
    f = SpecFile()
    apply_table(f, data)  # unknown keys ("did you mean"), types, tables
    _check_header(f, data)
    owned = _grid_owned(f.lrs is not None, "budget" in data)
    _check_overrides("base", f.base, owned)
    arms = _check_arms(f.arms, owned)
    if not f.baseline:
        raise ConfigError(f"baseline: required, the arm that is the final recipe (arms: {', '.join(arms)})")
    if f.baseline not in arms:
        raise ConfigError(f"baseline: {f.baseline!r} is not an arm (arms: {', '.join(arms)})")
    return GridSpec(name=f.name, description=f.description, preset=f.preset, baseline=f.baseline,
                    seeds=list(f.seeds), lrs=f.lrs, base=f.base,
                    budget={k: v for k, v in dataclasses.asdict(f.budget).items() if v is not None},
                    resources=f.resources.given(), arms=arms, path=path)


def _check_header(f: SpecFile, data: dict[str, Any]) -> None:
    """The ranges and rules the types alone do not say."""
    if "name" not in data:
        raise ConfigError("name: required (the grid / MLflow experiment name)")
    if not NAME_RE.fullmatch(f.name):
        raise ConfigError(f"name: must be a non-empty string of [A-Za-z0-9._-], got {f.name!r}")
    if f.preset:
        run_preset(f.preset)  # raises "preset: unknown ... (allowed: ...)"
    if not f.seeds or any(not 0 <= s <= INT64_MAX for s in f.seeds) or len(set(f.seeds)) != len(f.seeds):
        got = repr(f.seeds) if "seeds" in data else "nothing"
        raise ConfigError(f"seeds: must be a non-empty list of distinct integers >= 0, got {got}")
    if f.lrs is not None:
        if not f.lrs:
            raise ConfigError("lrs: must be a non-empty list of numbers > 0 (or left out), got []")
        for i, lr in enumerate(f.lrs):
            if not (lr > 0 and math.isfinite(lr)):
                raise ConfigError(f"lrs[{i}]: must be > 0 and finite, got {_short(lr)}")
        if len(set(f.lrs)) != len(f.lrs):
            raise ConfigError(f"lrs: values must be distinct, got {f.lrs}")
    if "budget" in data:
        f.budget.validate()
    f.resources.validate()


def _check_arms(table: dict[str, Any], owned: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    if not table:
        raise ConfigError("arms: at least one arm needed (e.g. [arms.olmo2] for the baseline)")
    for arm, overrides in table.items():
        if not ARM_RE.fullmatch(arm):
            raise ConfigError(f"arms.{_name(arm)}: arm names are [A-Za-z0-9_-] (no dots or spaces)")
        if not isinstance(overrides, dict):
            raise ConfigError(f"arms.{arm}: expected a table of RunConfig overrides, got {overrides!r}")
        _check_overrides(f"arms.{arm}", overrides, owned)
    return dict(table)


def _toml_error(path: Path, exc: Exception) -> ConfigError:
    msg = _one_line(str(exc))
    m = re.match(r"Cannot declare \('arms', '([^']*)'\) twice", msg)
    if m:
        msg = f"arm {m.group(1)!r} is defined twice, arm names must be unique ({msg})"
    elif msg.startswith("Cannot declare") or msg.startswith("Cannot overwrite a value"):
        msg = f"a key or table is given twice, e.g. a repeated arm name ({msg})"
    return ConfigError(f"{SPEC_PLACE}: not valid TOML: {msg} in '{path}'")


def read_spec_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a spec file; a missing or malformed file raises `ConfigError`."""
    return read_toml(path, SPEC_PLACE, _toml_error)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GridSpec:
    """Read, check and fully resolve a spec; raises `ConfigError` (one line) on any problem.

    `overrides` are `--set`-style edits of the spec itself, applied before the checks, e.g.
    `preset="olmo2-1B_v2"`, `seeds=[0,1,2,3]` or `base.train.batch_size=64`. A name without a
    directory or `.toml` suffix that is not a file is looked up among the bundled grids.
    """
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and (GRIDS_DIR / f"{p.name}.toml").is_file():
        p = GRIDS_DIR / f"{p.name}.toml"
    data = read_spec_toml(p)
    for text in overrides:
        _deep_merge(data, parse_override(text))
    spec = parse_spec(data, path=str(p))
    spec.validate()
    return spec


def bundled_specs() -> list[Path]:
    """The spec files shipped in `ablations/grids/`."""
    return sorted(GRIDS_DIR.glob("*.toml"))


TOP_KEYS = tuple(f.name for f in dataclasses.fields(SpecFile))  # a spec file's keys
