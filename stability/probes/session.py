"""The trainer's probe glue: builds each step's device row, probe rows and attention rows, and at a
read-out copies them all to the host in one transfer and names them (metric keys, spike events).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stability import metric_names as M
from stability.config import ProbesConfig
from stability.distributed import DataParallel
from stability.loss import LossParts
from stability.probes.layout import param_layout
from stability.probes.recorder import attn_layer_summary, attn_spec, probe_spec, step_spec
from stability.probes.stats import act_rms, attention_stats, grad_stats, param_update_stats
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
    """Owns the parameter layout, the row layouts and the spike monitor of one run."""

    def __init__(self, model: nn.Module, cfg: ProbesConfig, dp: DataParallel | None = None) -> None:
        self.cfg = cfg
        self.dp = dp  # data parallel: sharded parameters, local activations (all-reduced here)
        self.layout = param_layout(model)
        n_layers, n_heads = self.layout.n_layers, model.cfg.n_heads
        self.step_spec = step_spec(n_layers)
        self.probe_spec = probe_spec(n_layers)
        self.layers = list(cfg.layers) or list(range(n_layers))
        self._layer_set = set(self.layers)
        self.attn_spec = attn_spec(len(self.layers), n_heads)
        self.monitor = SpikeMonitor(cfg) if cfg.enabled and cfg.spikes else None
        self._last_grads: dict[str, torch.Tensor] = {}  # this step's grad stats, for after_step
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

    def step_row(self, parts: LossParts, grad_norm: torch.Tensor, clip_coef: torch.Tensor,
                 skipped: torch.Tensor, tensor_norms: list[torch.Tensor]) -> torch.Tensor:
        """The per-step device row (see `recorder.step_spec`)."""
        g = grad_stats(self.layout, tensor_norms)
        self._last_grads = g
        log_z = parts.log_z.detach()
        return self.step_spec.flatten(parts.loss, parts.ce, parts.z_loss, parts.z_loss_raw,
                                      grad_norm, clip_coef, skipped, log_z.mean(), log_z.amax(),
                                      g["embed_norm"], g["head_norm"], g["layer_norm"])

    def after_step(self, step: int, parts: LossParts, hidden: list[torch.Tensor] | None,
                   optimizer: torch.optim.Optimizer, model: nn.Module, input_ids: torch.Tensor,
                   doc_ids: torch.Tensor | None) -> None:
        """Probe and attention rows for `step` (after the optimizer step), kept on device."""
        if self.is_probe_step(step) and hidden is not None:
            dp = self.dp
            g = self._last_grads
            pu = param_update_stats(self.layout, optimizer, dp.sum_ if dp else None)
            act = act_rms(hidden, dp.mean_ if dp else None)
            parts_norm = g["part_norm"]
            self._probe_rows.append((step, self.probe_spec.flatten(
                g["layer_rms"], parts_norm[:, 0], parts_norm[:, 1], parts_norm[:, 2],
                pu["param_norm"], pu["update_rms"], pu["eps_regime"], act,
                g["embed_rms"], g["head_rms"], pu["embed_param_norm"], parts.logit_max_abs,
                parts.logit_mean)))
        if self.is_attn_step(step):
            rows = slice(0, self.cfg.attn_batch)  # of the global batch: every rank, same rows
            with self.dp.unsharded(model) if self.dp else contextlib.nullcontext():
                stats = attention_stats(model, input_ids[rows],
                                        None if doc_ids is None else doc_ids[rows], self.layers)
            self._attn_rows.append((step, self.attn_spec.flatten(
                stats["logit_max"], stats["entropy_mean"], stats["entropy_min"], stats["q_norm"],
                stats["k_norm"])))

    def read_out(self, buffer: torch.Tensor, start: int) -> ReadOut:
        """One host copy of `buffer` [n, width] (steps start..start+n-1) and the probe rows."""
        n = buffer.shape[0]
        probe_rows, attn_rows = self._probe_rows, self._attn_rows
        self._probe_rows, self._attn_rows = [], []
        flat = torch.cat([buffer.reshape(-1)] + [r for _, r in probe_rows] +
                         [r for _, r in attn_rows]).cpu().tolist()
        out = ReadOut()
        w = self.step_spec.width
        layer_slice = slice(w - self.layout.n_layers, w)  # the last field: per-layer grad norms
        per_layer_grads: dict[int, dict[str, float]] = {}
        for i in range(n):
            step, row = start + i, flat[i * w:(i + 1) * w]
            named = self.step_spec.named(row)
            if not (math.isfinite(named[M.TRAIN_LOSS]) and math.isfinite(named[M.GRAD_NORM])):
                out.first_bad = step
                break
            layer_norms = row[layer_slice]
            per_layer_grads[step] = {M.layer_key(M.GRAD_NORM, j): v
                                     for j, v in enumerate(layer_norms)}
            out.dense.append((step, M.GRAD_NORM, layer_norms))
            headline = {k: v for k, v in named.items() if "/layer_" not in k}
            out.steps.append((step, headline))
            if self.monitor is not None:
                out.events.extend(self.monitor.update(step, named, layer_norms))
        pos = n * w
        for step, _ in probe_rows:
            row = flat[pos:pos + self.probe_spec.width]
            pos += self.probe_spec.width
            if out.first_bad is None or step < out.first_bad:
                named = {**self.probe_spec.named(row), **per_layer_grads.get(step, {})}
                out.probes.append((step, {k: v for k, v in named.items() if self._keep(k)}))
                out.dense.extend((step, f.key, row[self.probe_spec.slice(f.key)])
                                 for f in self.probe_spec.fields if f.per_layer)
        for step, _ in attn_rows:
            row = flat[pos:pos + self.attn_spec.width]
            pos += self.attn_spec.width
            if out.first_bad is None or step < out.first_bad:
                summary = attn_layer_summary(row, self.attn_spec, self.layers)
                out.probes.append((step, summary))
                n = len(self.layers)
                for f in self.attn_spec.fields:  # per head: [len(layers)][H]
                    values = row[self.attn_spec.slice(f.key)]
                    heads = len(values) // n
                    out.dense.append((step, f.key, [values[i * heads:(i + 1) * heads]
                                                    for i in range(n)]))
                if self.monitor is not None:
                    self.monitor.observe_attention(max(
                        v for k, v in summary.items() if k.startswith(M.ATTN_LOGIT_MAX)))
        return out

    def _keep(self, key: str) -> bool:
        """Per-layer MLflow keys only for the probed layers (the dense artifact has them all)."""
        _, sep, index = key.rpartition("/layer_")
        return not sep or int(index) in self._layer_set

    def state_dict(self) -> dict[str, Any] | None:
        return self.monitor.state_dict() if self.monitor is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.monitor is not None and state is not None:
            self.monitor.load_state_dict(state)
