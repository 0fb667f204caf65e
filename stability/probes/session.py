"""The trainer's probe glue: builds each step's device row, probe rows and attention rows, and at a
read-out copies them all to the host in one transfer and names them (metric keys, spike events).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stability import metric_names as M
from stability.config import ProbesConfig
from stability.distributed import DataParallel
from stability.loss import LossParts
from stability.probes.compute import COMPUTE, Compute, ProbeInputs, ProbeSetup, require
from stability.probes.layer_map import LayerMap, layer_map_for
from stability.probes.layout import param_layout
from stability.probes.recorder import ProbeSpec
from stability.probes.registry import Cadence, Dims, Metric, Registry, Shape
from stability.probes.stats import grad_v_ratio_max
from stability.probes.sublayers import SublayerOutputs
from stability.spike_monitor import SpikeMonitor
from stability.spikes import SpikeEvent


@dataclass
class ReadOut:
    """What one read-out found, ready for the tracker."""

    steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # per-step headline
    probes: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # probe/attn steps
    first_bad: int | None = None  # first step with a non-finite loss or grad norm
    events: list[SpikeEvent] = field(default_factory=list)
    # Dense series for the columnar artifact: (step, key, values [L] or [L][H]).
    dense: list[tuple[int, str, list]] = field(default_factory=list)


class ProbeSession:
    """Owns the parameter layout, the row layouts and the spike monitor of one run.

    The rows are laid out from `registry` (default: every declaration in
    `stability.metric_names`) and filled by `computes` (default: `stability.probes.compute`);
    the model's layers are found through `layer_map` (default: the known map that describes it).
    """

    def __init__(self, model: nn.Module, cfg: ProbesConfig, dp: DataParallel | None = None, *,
                 layer_map: LayerMap | None = None, registry: Registry = M.REGISTRY,
                 computes: Mapping[Metric, Compute] = COMPUTE) -> None:
        self.cfg = cfg
        self.dp = dp
        self.layer_map = layer_map or layer_map_for(model)
        self.layout = param_layout(model, self.layer_map)
        n_layers = self.layout.n_layers
        self.layers = list(cfg.layers) or list(range(n_layers))
        self.setup = ProbeSetup(self.layout, self.layer_map, self.layers, cfg.attn_batch, dp)
        dims = Dims(n_layers, self.layer_map.heads_of(model), tuple(self.layers))
        self.step_spec = ProbeSpec.of(registry, Cadence.STEP, dims)
        self.probe_spec = ProbeSpec.of(registry, Cadence.PROBE, dims)
        self.attn_spec = ProbeSpec.of(registry, Cadence.ATTN, dims)
        self.computes = computes
        specs = (self.step_spec, self.probe_spec, self.attn_spec)
        for spec in specs:
            require(computes, [f.metric for f in spec.fields])
        # each row's (metric, compute) pairs in row order, looked up once
        self._plans = {spec: [(f.metric, computes[f.metric]) for f in spec.fields] for spec in specs}
        self.monitor = SpikeMonitor(cfg) if cfg.enabled and cfg.spikes else None
        probe_keys = {f.metric.key for f in self.probe_spec.fields}
        self.sublayers = (SublayerOutputs(model, self.layer_map) if cfg.enabled and probe_keys &
                          {M.ACT_ATTN_OUT_RMS, M.ACT_MLP_OUT_RMS} else None)
        self._reads_v_ratio = M.GRAD_V_RATIO_MAX in probe_keys
        self._inputs: ProbeInputs | None = None  # this step's, from step_row to after_step
        self._probe_rows: list[tuple[int, torch.Tensor]] = []
        self._attn_rows: list[tuple[int, torch.Tensor]] = []

    @property
    def params(self) -> list[nn.Parameter]:
        """The parameters in layout order (clip the gradients of exactly these)."""
        return self.layout.params

    def is_probe_step(self, step: int) -> bool:
        return self.cfg.enabled and step % self.cfg.every == 0

    def is_attn_step(self, step: int) -> bool:
        return self.cfg.enabled and step % self.cfg.attn_every == 0

    def arm(self, step: int) -> None:
        """Before `step`'s forward: record the sublayer outputs if it is a probe step."""
        if self.sublayers is not None:
            self.sublayers.armed = self.is_probe_step(step)

    def before_update(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """After `step_row` and clipping, before the optimizer step: what the step will change
        (the second moments the g^2 / v_hat ratio is judged against)."""
        if self._inputs is None:
            raise RuntimeError("before_update before step_row")
        if self._reads_v_ratio and self.is_probe_step(step):
            dp = self.dp
            self._inputs.v_ratio = grad_v_ratio_max(self.layout, optimizer, self._inputs.clip_coef,
                                                    dp.max_ if dp else None)

    def row(self, spec: ProbeSpec, inputs: ProbeInputs) -> torch.Tensor:
        """The device row of `spec` for one step: each metric's compute, checked by name and shape.

        Computes run in row order, so data-parallel ranks issue their collectives (the optimizer
        sums, the activation means) in the same order.
        """
        plan = self._plans.get(spec) or [(f.metric, self.computes[f.metric]) for f in spec.fields]
        return spec.flatten({metric: compute(inputs) for metric, compute in plan})

    def step_row(self, parts: LossParts, grad_norm: torch.Tensor, clip_coef: torch.Tensor,
                 skipped: torch.Tensor, tensor_norms: list[torch.Tensor]) -> torch.Tensor:
        """The per-step device row (the step cadence's declarations)."""
        self._inputs = ProbeInputs(self.setup, parts, grad_norm, clip_coef, skipped, tensor_norms)
        return self.row(self.step_spec, self._inputs)

    def after_step(self, step: int, parts: LossParts, hidden: list[torch.Tensor] | None,
                   optimizer: torch.optim.Optimizer, model: nn.Module, input_ids: torch.Tensor,
                   doc_ids: torch.Tensor | None) -> None:
        """Probe and attention rows for `step` (after the optimizer step), kept on device."""
        inputs, self._inputs = self._inputs, None  # holds the step's activations: let them go
        if inputs is None:
            raise RuntimeError("after_step before step_row")
        sublayers = self.sublayers.take() if self.sublayers is not None else None
        inputs.after_step(parts, optimizer, hidden, model, input_ids, doc_ids, sublayers)
        if self.is_probe_step(step) and hidden is not None and (
                sublayers is not None or self.sublayers is None):
            self._probe_rows.append((step, self.row(self.probe_spec, inputs)))
        if self.is_attn_step(step):
            self._attn_rows.append((step, self.row(self.attn_spec, inputs)))

    def read_out(self, buffer: torch.Tensor, start: int) -> ReadOut:
        """One host copy of `buffer` [n, width] (steps start..start+n-1) and the probe rows.

        Scalars of the step row are logged every step; its per-layer series go to the dense
        artifact every step and to MLflow with the step's probe row.
        """
        n = buffer.shape[0]
        probe_rows, attn_rows = self._probe_rows, self._attn_rows
        self._probe_rows, self._attn_rows = [], []
        flat = torch.cat([buffer.reshape(-1)] + [r for _, r in probe_rows] +
                         [r for _, r in attn_rows]).cpu().tolist()
        out = ReadOut()
        w = self.step_spec.width
        step_layers: dict[int, dict[str, float]] = {}  # per-layer MLflow keys, for probe steps
        for i in range(n):
            step, row = start + i, flat[i * w:(i + 1) * w]
            headline = self.step_spec.scalars(row)
            if not (math.isfinite(headline[M.TRAIN_LOSS]) and math.isfinite(headline[M.GRAD_NORM])):
                out.first_bad = step
                break
            step_layers[step] = self.step_spec.per_layer(row)
            out.dense.extend((step, key, values) for key, values in self.step_spec.dense(row))
            out.steps.append((step, headline))
            if self.monitor is not None:
                layer_norms = self.step_spec.values(row, M.GRAD_NORM, Shape.PER_LAYER)
                out.events.extend(self.monitor.update(step, headline, layer_norms))
        pos = n * w
        for step, _ in probe_rows:
            row = flat[pos:pos + self.probe_spec.width]
            pos += self.probe_spec.width
            if out.first_bad is None or step < out.first_bad:
                out.probes.append((step, {**self.probe_spec.named(row), **step_layers.get(step, {})}))
                out.dense.extend((step, key, values) for key, values in self.probe_spec.dense(row))
        for step, _ in attn_rows:
            row = flat[pos:pos + self.attn_spec.width]
            pos += self.attn_spec.width
            if out.first_bad is None or step < out.first_bad:
                summary = self.attn_spec.named(row)
                out.probes.append((step, summary))
                out.dense.extend((step, key, values) for key, values in self.attn_spec.dense(row))
                if self.monitor is not None:
                    self.monitor.observe_attention(max(
                        summary[M.layer_key(M.ATTN_LOGIT_MAX, i)] for i in self.layers))
        return out

    def close(self) -> None:
        """Remove the hooks this session put on the model (a host's model outlives a monitor)."""
        if self.sublayers is not None:
            self.sublayers.close()

    def state_dict(self) -> dict[str, Any] | None:
        return self.monitor.state_dict() if self.monitor is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.monitor is not None and state is not None:
            self.monitor.load_state_dict(state)
