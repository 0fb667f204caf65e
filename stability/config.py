"""`RunConfig`: the dataclasses of one training run, loaded from presets, TOML and `--set` overrides.

Layering: `RunConfig()` defaults <- a named preset <- a TOML file <- repeatable `--set a.b=value`.
Every value is type-checked and range-checked before anything is created; a bad one raises
`ConfigError` with a one-line message naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from model.config import ConfigError, ModelConfig, check_attention, suggest
from model.presets import MODEL_PRESETS, model_preset, unknown_preset
from stability.data.config import DataConfig
from stability.presets import RECIPE_RUN_KNOBS, SIZE_DEFAULTS


@dataclass
class OptimConfig:
    """AdamW and its stability knobs (docs/reference.md sections 1 and 5)."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    embedding_weight_decay: bool = False  # OLMo 2: no decay on embeddings
    norm_weight_decay: bool = True  # OLMo 2: norm scales (QK-norm too) decay (decay_norm_and_bias)
    independent_weight_decay: bool = False  # Wortsman et al.: decay scaled by schedule, not by lr
    skip_step: bool = False  # OLMo-core's SkipStepAdamW: skip updates whose CE loss or grad norm
    skip_step_sigma: float = 6.0  # exceeds mean + sigma std of the previous window (judged once
    skip_step_window: int = 128  # window // 2 values are known, counting the current one)
    clip_grad_norm: float = 1.0  # global-norm clipping threshold; 0 = off

    def validate(self, section: str = "optim") -> None:
        _positive(section, self, "lr", "eps")
        _non_negative(section, self, "weight_decay", "clip_grad_norm")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{section}.betas: need two values in [0, 1), got {self.betas}")
        if self.skip_step_sigma <= 0:
            raise ConfigError(f"{section}.skip_step_sigma: must be > 0, got {self.skip_step_sigma}")
        if self.skip_step_window < 6:  # judged from window // 2 values on: std needs >= 2 before
            raise ConfigError(f"{section}.skip_step_window: must be >= 6, got {self.skip_step_window}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then decay to `alpha_f` x peak at `train.steps`."""

    kind: str = "cosine"
    warmup_steps: int = 100
    alpha_f: float = 0.1

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"kind": ("cosine", "linear", "constant")}

    def validate(self, section: str = "schedule") -> None:
        _check_choices(section, self)
        _non_negative(section, self, "warmup_steps")
        if not 0.0 <= self.alpha_f <= 1.0:
            raise ConfigError(f"{section}.alpha_f: must be in [0, 1], got {self.alpha_f}")


@dataclass
class LossConfig:
    """Loss = CE + z_loss * mean(logsumexp(logits)^2)."""

    z_loss: float = 1e-5  # coefficient; 0 = off

    def validate(self, section: str = "loss") -> None:
        _non_negative(section, self, "z_loss")


@dataclass
class TrainConfig:
    """Budget, batch shape, seed, intervals, checkpoints and device."""

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10  # host read-out and MLflow write interval
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0: only at the end
    checkpoint_dir: str = ""  # "": runs/<run name>
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    threads: int = 0  # torch CPU threads; 0: torch's default
    compile: bool = False  # torch.compile each block (after FSDP sharding); probes stay eager
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)
    on_spike: str = "log"  # log: record loss spikes; rewind: go back and skip data ([rewind])

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "device": ("auto", "cpu", "cuda"),
        "precision": ("auto", "fp32", "bf16"),
        "on_spike": ("log", "rewind"),
    }

    def validate(self, section: str = "train") -> None:
        _check_choices(section, self)
        _positive(section, self, "steps", "batch_size", "seq_len", "log_every", "keep_checkpoints")
        _non_negative(section, self, "seed", "eval_every", "eval_batches", "checkpoint_every", "threads")


@dataclass
class ProbesConfig:
    """Stability probes (cheap enough to leave on: no host sync between read-outs)."""

    enabled: bool = True
    every: int = 10  # per-layer grads, params, updates, activations, logits every N steps
    attn_every: int = 50  # attention logits / entropy / q,k norms recomputed every N steps
    attn_batch: int = 2  # rows of the step's batch the attention probe uses
    spikes: bool = True  # online spike detectors (OLMo 2, OLMo-core and the per-series rule)
    spike_window: int = 1000  # OLMo 2 score: |x - mean| >= spike_sigma std of the previous window
    spike_sigma: float = 7.0
    olmo_core_window: int = 128  # OLMo-core's StabilityMonitorCallback: window_size,
    olmo_core_sigma: float = 6.0  # threshold_std,
    olmo_core_score_window: int = 10000  # rolling_window (steps of the running score)
    online_window: int = 128  # per-series rule: x > mean + online_sigma std (sample) of the
    online_sigma: float = 6.0  # previous window (judged once online_window // 2 values are known)
    layers: list[int] = field(default_factory=list)  # layers probed for attention and logged
    # per layer to MLflow ([] = all); the dense artifact always has every layer's grads

    def validate(self, section: str = "probes") -> None:
        _positive(section, self, "every", "attn_every", "attn_batch", "spike_sigma",
                  "online_sigma", "olmo_core_sigma", "olmo_core_score_window")
        for key in ("spike_window", "online_window", "olmo_core_window"):
            if getattr(self, key) < 4:
                raise ConfigError(f"{section}.{key}: must be >= 4, got {getattr(self, key)}")
        if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
            raise ConfigError(f"{section}.layers: need distinct layer indices >= 0, got {self.layers}")


@dataclass
class RewindConfig:
    """`train.on_spike = "rewind"`: on a loss spike (any rule) or a non-finite loss, go back to an
    in-memory snapshot at least `before` steps earlier, skip `skip_batches` batches of data and
    go on, at most `max_rewinds` times (PaLM restarted ~100 steps before a spike and skipped
    200-500 batches). Snapshots are taken every `every` steps (0: every `train.log_every`).

    The skip counts from the snapshot, as PaLM's does: the step gone back to trains on the batch
    `skip_batches` further on, so the spike's own batch is left out only when `skip_batches`
    exceeds the distance gone back (`before` up to `before + every`)."""

    before: int = 20
    skip_batches: int = 50
    max_rewinds: int = 3
    every: int = 0

    def validate(self, section: str = "rewind") -> None:
        _positive(section, self, "before", "max_rewinds")
        _non_negative(section, self, "skip_batches", "every")


@dataclass
class TrackingConfig:
    """Where runs are logged (--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""

    enabled: bool = True
    uri: str = ""
    experiment: str = "stability"
    run_name: str = ""
    run_id: str = ""  # attach to this existing run when there is no checkpoint (grid cells)
    parent_run_id: str = ""  # nest under this run (a grid's parent run)
    arm: str = ""  # the grid arm this run is (tag `arm`)
    via: str = ""  # write through this server instead of `uri` (a grid's loopback server in front
    # of a sqlite `uri`); `uri`, the store the user named, is what the run records

    def validate(self, section: str = "tracking") -> None:
        if not self.experiment:
            raise ConfigError(f"{section}.experiment: must not be empty")


@dataclass
class RunConfig:
    """One training run: the sections of a TOML run file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    rewind: RewindConfig = field(default_factory=RewindConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preset: str = ""  # the named preset this config started from ("" = none)

    def validate(self) -> None:
        """Check every section, then the cross-section rules."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len: {self.train.seq_len} exceeds model.max_seq_len "
                f"{self.model.max_seq_len}"
            )
        if not self.data.tokenizer and self.data.tokenizer_vocab > self.model.vocab_size:
            raise ConfigError(
                f"data.tokenizer_vocab: {self.data.tokenizer_vocab} exceeds model.vocab_size "
                f"{self.model.vocab_size}"
            )
        if any(i >= self.model.n_layers for i in self.probes.layers):
            raise ConfigError(f"probes.layers: {self.probes.layers} has an index outside "
                              f"0..{self.model.n_layers - 1}")
        if self.train.device == "cpu":
            check_attention(self.model.attention, "cpu")
        if self.train.on_spike == "rewind":
            if not (self.probes.enabled and self.probes.spikes):
                raise ConfigError("train.on_spike: 'rewind' needs the spike detectors "
                                  "(probes.enabled = true and probes.spikes = true)")
            if self.rewind.every % self.train.log_every:
                raise ConfigError(f"rewind.every: must be 0 or a multiple of train.log_every "
                                  f"({self.train.log_every}), got {self.rewind.every}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choices(section: str, obj: Any) -> None:
    for key, allowed in getattr(obj, "CHOICES", {}).items():
        value = getattr(obj, key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}: {value!r} is not one of ({', '.join(allowed)})")


def _positive(section: str, obj: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if not value > 0:
            raise ConfigError(f"{section}.{key}: must be > 0, got {value}")
        if not math.isfinite(value):
            raise ConfigError(f"{section}.{key}: must be finite, got {value}")


def _non_negative(section: str, obj: Any, *keys: str) -> None:
    for key in keys:
        if not getattr(obj, key) >= 0:
            raise ConfigError(f"{section}.{key}: must be >= 0, got {getattr(obj, key)}")


# ----------------------------------------------------------------------------- typed assignment

_NONE_WORDS = ("null", "none", "None")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list ({_type_name(typing.get_args(tp)[0])} each)"
    return {type(None): "null", bool: "a bool", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or value in _NONE_WORDS):
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # Optional[X] and not null: X's own message (which item, which type)
            return _coerce(key, value, others[0])
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is int and not _INT64[0] <= value <= _INT64[1]:
        raise ConfigError(f"{key}: {_short(value)} is out of range (64-bit integers)")
    if tp is float and isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {_short(value)} is too large for a number") from None
    return value


_INT64 = (-(2**63), 2**63 - 1)


def _short(value: Any) -> str:
    """`value` for a message: huge integers as their first digits and length."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def apply_table(obj: Any, table: dict[str, Any], prefix: str = "") -> None:
    """Assign the nested `table` onto dataclass `obj`, type-checking each key (a field typed
    `dict[...]` takes a free-form table as it is)."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            place = dotted if dotted.isprintable() else repr(dotted)  # the message stays one line
            raise ConfigError(f"{place}: unknown key ({suggest(key, names)})")
        current = getattr(obj, key)
        if typing.get_origin(hints[key]) is dict:  # a free-form table, checked by its owner
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a table, got {value!r}")
            setattr(obj, key, copy.deepcopy(value))
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a table of keys, got {value!r}")
            apply_table(current, value, prefix=f"{dotted}.")
        else:
            if isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected {_type_name(hints[key])}, got a table")
            setattr(obj, key, _coerce(dotted, value, hints[key]))


def parse_override(text: str) -> dict[str, Any]:
    """`"optim.lr=1e-3"` -> `{"optim": {"lr": 0.001}}`; values are read as TOML, else as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    table: dict[str, Any] = {}
    node = table
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return table


def read_toml(path: str | Path, place: str = "--config",
              decode_error: Callable[[Path, Exception], ConfigError] | None = None) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError naming `place` (a
    `decode_error` builds the message for malformed files when given)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{place}: file '{p}' does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        if decode_error is not None:
            raise decode_error(p, exc) from None
        raise ConfigError(f"{place}: '{p}' is not valid TOML: {exc}") from None


def run_preset(name: str) -> RunConfig:
    """A fresh `RunConfig` for preset `name` (e.g. `olmo2-small`): the model preset, its recipe's
    training knobs and its size's budget (`stability.presets`)."""
    if name not in MODEL_PRESETS:
        raise unknown_preset(name, "preset")
    recipe, _, size = name.partition("-")
    cfg = RunConfig(model=model_preset(name), preset=name)
    apply_table(cfg, RECIPE_RUN_KNOBS.get(recipe, {}))
    apply_table(cfg, SIZE_DEFAULTS.get(size, {}))
    return cfg


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    table: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a `RunConfig`: preset (CLI, else the file's `preset` key) <- file <- table <- --set."""
    layers: list[dict[str, Any]] = []
    if config_file is not None:
        layers.append(read_toml(config_file))
    if table:
        layers.append(table)
    layers.extend(parse_override(o) for o in overrides)
    name = preset
    if name is None:
        for layer in layers:
            if isinstance(layer.get("preset"), str):
                name = layer["preset"]
    cfg = run_preset(name) if name else RunConfig()
    for layer in layers:
        layer = {k: v for k, v in layer.items() if k != "preset"}
        apply_table(cfg, layer)
    cfg.validate()
    return cfg


# How a run executes, not what it computes: these keys change neither its identity (the cell
# hash) nor its results. The `tracking` section is never part of a run's identity either.
EXECUTION_KEYS = ("train.checkpoint_dir", "train.log_every", "train.keep_checkpoints", "train.threads",
                  "train.compile", "train.activation_checkpointing")
# What may differ between a checkpoint's config and the one resuming it: how it executes, and the
# budget and cadences a resumed run may extend or move to.
RESUMABLE_KEYS = (*EXECUTION_KEYS, "train.steps", "train.eval_every", "train.eval_batches",
                  "train.checkpoint_every", "train.device")


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    """Content hash of a resolved config without `tracking` and `EXECUTION_KEYS`: the identity of
    a run or grid cell (16 hex digits)."""
    data = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    content = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items() if k != "tracking"}
    for key in EXECUTION_KEYS:
        section, name = key.split(".")
        content.get(section, {}).pop(name, None)
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resume_conflicts(saved: RunConfig | dict[str, Any], now: RunConfig | dict[str, Any]) -> list[str]:
    """The keys whose values differ between a checkpoint's config and the resuming one, beyond
    `RESUMABLE_KEYS` and `tracking` (a non-empty list means: not the same run)."""
    old, new = flatten(saved), flatten(now)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                  and k not in RESUMABLE_KEYS and not k.startswith("tracking."))


def flatten(cfg: RunConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim.lr": 3e-4, ...}`: the resolved config as dotted keys (MLflow params)."""
    data = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML (null values are written as the string "null")."""
    lines: list[str] = []
    data = cfg.to_dict()
    if data.pop("preset"):
        lines.append(f'preset = "{cfg.preset}"\n')
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a `RunConfig` from `to_dict()` output (checkpoints, artifacts)."""
    cfg = RunConfig()
    apply_table(cfg, data)
    return cfg
