"""The vocabulary of metric declarations: each metric is declared once (key, shape, cadence, what it
is, where the idea comes from) and everything else is derived from the declarations: the device row
layouts (`stability.probes.recorder`), the MLflow and dense names, and `docs/metrics.md`.

Torch-free, like `stability.metric_names` (the declarations themselves), which reports and
dashboards import. The device metrics' compute functions live with torch, in
`stability.probes.compute`, bound to their declarations by key and shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum


class Shape(StrEnum):
    """How many values a metric has per step, and so how it is named."""

    SCALAR = "scalar"  # MLflow `key`
    PER_LAYER = "per layer"  # MLflow `key/layer_{i}` (probed layers), dense [layer]
    PER_HEAD = "per head"  # MLflow `key/layer_{i}` (summary over heads), dense [layer, head]


class Cadence(StrEnum):
    """When a metric gets a value. The first three are device rows, read out in one copy."""

    STEP = "step"
    PROBE = "probe"
    ATTN = "attn"
    READ_OUT = "read_out"
    EVAL = "eval"
    ONCE = "once"

    @property
    def on_device(self) -> bool:
        """Whether the metric is a field of a device row (and needs a compute function)."""
        return self in (Cadence.STEP, Cadence.PROBE, Cadence.ATTN)


CADENCE_TEXT = {
    Cadence.STEP: "every step (device row, read out every `train.log_every` steps)",
    Cadence.PROBE: "every `probes.every` steps (device row)",
    Cadence.ATTN: "every `probes.attn_every` steps (device row, on `probes.attn_batch` rows of the batch)",
    Cadence.READ_OUT: "each read-out (every `train.log_every` steps, at checkpoints and the last step; "
                      "host side)",
    Cadence.EVAL: "every `train.eval_every` steps and at the end (host side)",
    Cadence.ONCE: "once, at step 0 of a fresh run",
}

# How a per-head metric's heads reduce to its per-layer MLflow key.
SUMMARIES = ("max", "min", "mean")

_KEY = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_]+)+$")
_LAYER_SUFFIX = re.compile(r"/layer_\d+$")


@dataclass(frozen=True, eq=False)
class Metric:
    """One declared metric, unique by (key, shape) in its registry: `grad/norm` is both the global
    scalar and, per layer, `grad/norm/layer_{i}`. Compared and hashed as the declaration object
    itself (rows look values up by it every step: no field hashing)."""

    key: str
    cadence: Cadence
    shape: Shape
    what: str
    source: str = ""  # the paper or code the metric follows, where there is one
    summary: str = ""  # per head only: one of SUMMARIES


@dataclass(frozen=True)
class Dims:
    """The sizes a row layout needs: layers, heads, and the probed layers (attention, MLflow)."""

    n_layers: int
    n_heads: int
    layers: tuple[int, ...]

    def shape_of(self, metric: Metric) -> tuple[int, ...]:
        """The tensor shape of `metric` in a device row: (), (n_layers,) or (len(layers), n_heads)."""
        if metric.shape is Shape.SCALAR:
            return ()
        if metric.shape is Shape.PER_LAYER:
            return (self.n_layers,)
        return (len(self.layers), self.n_heads)


class Registry:
    """Declarations in order; a device row lists its cadence's metrics in declaration order."""

    def __init__(self, metrics: Iterable[Metric] = ()) -> None:
        self._metrics: list[Metric] = []
        for m in metrics:
            self.add(m)

    def declare(self, key: str, cadence: Cadence, shape: Shape = Shape.SCALAR, *, what: str,
                source: str = "", summary: str = "") -> str:
        """Declare a metric; returns its key (so `X = REGISTRY.declare("x/y", ...)` names it)."""
        self.add(Metric(key, cadence, shape, what, source, summary))
        return key

    def add(self, m: Metric) -> None:
        """Check and append one declaration: a well-formed key, declared once per shape, a
        summary exactly for per-head metrics."""
        if not _KEY.match(m.key) or _LAYER_SUFFIX.search(m.key):
            raise ValueError(f"metric key {m.key!r}: want lower-case slash-separated words, "
                             "no /layer_N suffix (per-layer names are derived)")
        if any(d.key == m.key and d.shape == m.shape for d in self._metrics):
            raise ValueError(f"metric {m.key!r} ({m.shape}) is declared twice")
        if (m.shape is Shape.PER_HEAD) != (m.summary in SUMMARIES):
            raise ValueError(f"metric {m.key!r}: a per-head metric needs a summary in {SUMMARIES}, "
                             f"other shapes none (got {m.summary!r})")
        if not m.what:
            raise ValueError(f"metric {m.key!r}: say what it is (`what`)")
        self._metrics.append(m)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._metrics)

    def __len__(self) -> int:
        return len(self._metrics)

    def at(self, cadence: Cadence) -> list[Metric]:
        """The metrics of one cadence, in declaration order."""
        return [m for m in self._metrics if m.cadence is cadence]

    def get(self, key: str, shape: Shape | None = None) -> Metric:
        """The declaration of `key` (and `shape`, needed when the key has several)."""
        found = [m for m in self._metrics if m.key == key and shape in (None, m.shape)]
        if len(found) != 1:
            shapes = sorted(m.shape.value for m in self._metrics if m.key == key)
            raise KeyError(f"{key!r}{f' ({shape})' if shape else ''}: declared as {shapes or 'nothing'}")
        return found[0]

    def declared(self, logged: str) -> Metric | None:
        """The declaration an MLflow key (`grad/norm`, `grad/norm/layer_3`) is logged under."""
        base = _LAYER_SUFFIX.sub("", logged)
        if base != logged:
            return next((m for m in self._metrics if m.key == base and m.shape is not Shape.SCALAR),
                        None)
        return next((m for m in self._metrics if m.key == logged and m.shape is Shape.SCALAR), None)
