"""Live spike detection for the trainer: the OLMo 2 score, OLMo-core's stability monitor and the
per-series online rule on the CE loss and grad-norm series, with attribution of each event to the
layer whose grad norm deviated most and to rising attention logits or log Z (host side, fed at
each read-out; state saved in checkpoints)."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import numpy as np

from stability import metric_names as M
from stability.config import ProbesConfig
from stability.spikes import (
    OLMO2_RULE,
    ONLINE_RULE,
    OlmoCoreStability,
    OnlineSpikeDetector,
    SpikeEvent,
    SpikeRule,
    attribute,
    events_to_frame,
    rising,
)

ATTRIBUTION_WINDOW = 128  # steps of per-layer history an event is judged against



def rules_from(cfg: ProbesConfig) -> tuple[SpikeRule, SpikeRule]:
    """The OLMo 2 and per-series online rules with the window and threshold of `cfg` (defaults:
    the OLMo 2 report's 1000 / 7 sigma and 128 / 6 sigma)."""
    olmo2 = dataclasses.replace(OLMO2_RULE, window=cfg.spike_window, sigma=cfg.spike_sigma,
                                min_history=cfg.spike_window)
    online = dataclasses.replace(ONLINE_RULE, window=cfg.online_window, sigma=cfg.online_sigma,
                                 min_history=max(2, cfg.online_window // 2))
    return olmo2, online


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (checkpoints load with weights_only=True)."""
    return value.item() if hasattr(value, "item") else value


class SpikeMonitor:
    """Online detectors + the recent history needed to attribute their events."""

    def __init__(self, cfg: ProbesConfig | None = None) -> None:
        cfg = cfg or ProbesConfig()
        olmo2, online = rules_from(cfg)
        # (series, detector, score metric): one detector per rule and series.
        self.detectors = [
            (series, OnlineSpikeDetector(rule, series), key)
            for series, rule, key in ((M.TRAIN_CE_LOSS, olmo2, M.SPIKE_SCORE_LOSS),
                                      (M.GRAD_NORM, olmo2, M.SPIKE_SCORE_GRAD_NORM),
                                      (M.TRAIN_CE_LOSS, online, M.SPIKE_ONLINE_LOSS),
                                      (M.GRAD_NORM, online, M.SPIKE_ONLINE_GRAD_NORM))]
        self.olmo_core = OlmoCoreStability(cfg.olmo_core_window, cfg.olmo_core_sigma,
                                           cfg.olmo_core_score_window)
        self.layer_norms: deque[list[float]] = deque(maxlen=ATTRIBUTION_WINDOW + 1)
        self.log_z: deque[float] = deque(maxlen=ATTRIBUTION_WINDOW + 1)
        self.attn_max: deque[float] = deque(maxlen=16)
        self.events: list[SpikeEvent] = []

    @property
    def count(self) -> int:
        return len(self.events)

    def observe_attention(self, logit_max: float) -> None:
        """The max attention logit over layers at an attention-probe step."""
        self.attn_max.append(logit_max)

    def update(self, step: int, values: dict[str, float], layer_norms: list[float]) -> list[SpikeEvent]:
        """Feed one step's values (finite: the trainer stops at divergence); returns new events."""
        self.layer_norms.append(layer_norms)
        self.log_z.append(values[M.LOGITS_LOG_Z_MEAN])
        new = []
        for series, detector, _ in self.detectors:
            event = detector.update(step, values[series])
            if event is not None:
                event.series = f"{series}@{detector.rule.name}"
                new.append(event)
        for event in self.olmo_core.update(step, {s: values[s] for s in (M.TRAIN_CE_LOSS, M.GRAD_NORM)}):
            event.series = f"{event.series}@olmo_core"
            new.append(event)
        for event in new:
            self._attribute(event)
        self.events.extend(new)
        return new

    def _attribute(self, event: SpikeEvent) -> None:
        """Fill the event's leading layer and whether log Z and attention logits were rising."""
        norms = np.asarray(self.layer_norms, dtype=np.float64)
        event.leading_layer, event.leading_sigma = attribute(len(norms) - 1, norms, ATTRIBUTION_WINDOW)
        event.log_z_rising = rising(np.asarray(self.log_z), len(self.log_z) - 1, ATTRIBUTION_WINDOW)
        if len(self.attn_max) >= 3:
            event.attn_logit_rising = rising(np.asarray(self.attn_max), len(self.attn_max) - 1,
                                             len(self.attn_max) - 1)

    def scores(self) -> dict[str, float]:
        """The spike/* metrics now (detectors that have judged nothing yet are left out)."""
        out = {key: detector.score for _, detector, key in self.detectors}
        out[M.SPIKE_OLMO_CORE] = self.olmo_core.score
        out[M.SPIKE_OLMO_CORE_RUNNING] = self.olmo_core.running_score
        out[M.SPIKE_OLMO_CORE_TOTAL] = self.olmo_core.total_score
        # drop what has no value yet (NaN: nothing judged; None: OLMo-core's windows not full)
        out = {k: v for k, v in out.items() if v is not None and v == v}
        out[M.SPIKE_COUNT] = float(self.count)
        return out

    def frame(self):
        return events_to_frame(self.events)

    def state_dict(self) -> dict[str, Any]:
        return {
            "detectors": [d.state_dict() for _, d, _ in self.detectors],
            "olmo_core": self.olmo_core.state_dict(),
            "layer_norms": [list(r) for r in self.layer_norms],
            "log_z": list(self.log_z),
            "attn_max": list(self.attn_max),
            "events": [{k: _plain(v) for k, v in vars(e).items()} for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for (_, detector, _), s in zip(self.detectors, state["detectors"]):
            detector.load_state_dict(s)
        self.olmo_core.load_state_dict(state["olmo_core"])
        for live, saved in ((self.layer_norms, state["layer_norms"]), (self.log_z, state["log_z"]),
                            (self.attn_max, state["attn_max"])):
            live.clear()  # replaced, not extended: a rewind loads into a monitor in use
            live.extend(saved)
        self.events = [SpikeEvent(**e) for e in state["events"]]
