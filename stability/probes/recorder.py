"""Probe rows: one flat device vector per row, laid out from the declarations of a cadence, and
named back on the host (MLflow keys, dense series).

The trainer appends one flat device vector per probe step; at a read-out all rows are stacked and
copied to the host in one transfer. A row is built from values keyed by their declaration and
checked by name and shape, so no value can land under another metric's key.

Names, from the shape: a scalar is logged as its key; a per-layer metric as `key/layer_{i}` for
the probed layers (every layer in the dense artifact, as `key` [layer]); a per-head metric as
`key/layer_{i}` reduced over heads by its declared summary (dense: `key` [layer, head]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from stability import metric_names as M
from stability.probes.registry import Cadence, Dims, Metric, Registry, Shape

SUMMARY = {"max": max, "min": min, "mean": lambda xs: sum(xs) / len(xs)}


@dataclass(frozen=True)
class Field:
    """Where one metric's values sit in a row, and their shape there."""

    metric: Metric
    start: int
    shape: tuple[int, ...]

    @property
    def key(self) -> str:
        return self.metric.key

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)


class ProbeSpec:
    """The fixed layout of a row: its metrics in declaration order, at their shapes for `dims`."""

    def __init__(self, metrics: Sequence[Metric], dims: Dims) -> None:
        self.dims = dims
        self.fields: list[Field] = []
        pos = 0
        for m in metrics:
            self.fields.append(Field(m, pos, dims.shape_of(m)))
            pos += self.fields[-1].size
        self.width = pos
        self.metrics = frozenset(f.metric for f in self.fields)
        self._order = [f.metric for f in self.fields]
        self._shapes = [torch.Size(f.shape) for f in self.fields]
        self._probed = frozenset(dims.layers)

    @classmethod
    def of(cls, registry: Registry, cadence: Cadence, dims: Dims) -> ProbeSpec:
        """The row of `cadence`: every metric declared for it."""
        return cls(registry.at(cadence), dims)

    def flatten(self, values: Mapping[Metric, torch.Tensor]) -> torch.Tensor:
        """One float32 vector from one device tensor per metric of the row, each of its shape."""
        if len(values) != len(self.fields) or not self.metrics.issuperset(values):
            self._mismatch(values)
        tensors = [values[m] for m in self._order]
        if [v.shape for v in tensors] != self._shapes:
            self._wrong_shape(tensors)
        return torch.cat([v.detach().float().reshape(-1) for v in tensors])

    def _wrong_shape(self, tensors: list[torch.Tensor]) -> None:
        for f, v in zip(self.fields, tensors):
            if v.shape != f.shape:
                raise ValueError(f"{f.key} ({f.metric.shape}): want shape {f.shape}, got {tuple(v.shape)}")

    def _mismatch(self, values: Mapping[Metric, torch.Tensor]) -> None:
        missing = sorted(f"{m.key} ({m.shape})" for m in self.metrics - values.keys())
        extra = sorted(f"{m.key} ({m.shape})" for m in values.keys() - self.metrics)
        raise ValueError(f"row values: missing {missing}, not in this row {extra}")

    def field(self, key: str, shape: Shape | None = None) -> Field:
        """The field of `key` (and `shape`, where the key has two in this row)."""
        found = [f for f in self.fields if f.key == key and shape in (None, f.metric.shape)]
        if len(found) != 1:
            raise KeyError(f"{key!r}{f' ({shape})' if shape else ''}: {len(found)} fields in this row")
        return found[0]

    def slice(self, key: str, shape: Shape | None = None) -> slice:
        """Where field `key` sits in a row."""
        return self.field(key, shape).slice

    def values(self, row: Sequence[float], key: str, shape: Shape | None = None) -> list[float]:
        """One field's values of a host row, flat."""
        return list(row[self.slice(key, shape)])

    def named(self, row: Sequence[float]) -> dict[str, float]:
        """Every MLflow key of a host row -> value, in field order."""
        out: dict[str, float] = {}
        for f in self.fields:
            out.update(self._names(f, row[f.slice]))
        return out

    def scalars(self, row: Sequence[float]) -> dict[str, float]:
        """MLflow key -> value of the row's scalar metrics."""
        return {f.key: row[f.start] for f in self.fields if f.metric.shape is Shape.SCALAR}

    def per_layer(self, row: Sequence[float]) -> dict[str, float]:
        """MLflow keys of the probed layers -> value, of the per-layer and per-head metrics."""
        out: dict[str, float] = {}
        for f in self.fields:
            if f.metric.shape is not Shape.SCALAR:
                out.update(self._names(f, row[f.slice]))
        return out

    def _names(self, f: Field, part: Sequence[float]) -> dict[str, float]:
        if f.metric.shape is Shape.SCALAR:
            return {f.key: part[0]}
        if f.metric.shape is Shape.PER_LAYER:
            return {M.layer_key(f.key, i): v for i, v in enumerate(part) if i in self._probed}
        reduce, heads = SUMMARY[f.metric.summary], self.dims.n_heads
        return {M.layer_key(f.key, layer): reduce(part[pos * heads:(pos + 1) * heads])
                for pos, layer in enumerate(self.dims.layers)}

    def dense(self, row: Sequence[float]) -> list[tuple[str, list]]:
        """(key, values [layer] or [probed layer][head]) of the per-layer and per-head metrics."""
        out: list[tuple[str, list]] = []
        for f in self.fields:
            part = row[f.slice]
            if f.metric.shape is Shape.PER_LAYER:
                out.append((f.key, part))
            elif f.metric.shape is Shape.PER_HEAD:
                heads = self.dims.n_heads
                out.append((f.key, [part[p * heads:(p + 1) * heads]
                                    for p in range(len(self.dims.layers))]))
        return out
