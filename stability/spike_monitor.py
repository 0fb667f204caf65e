"""Live spike detection for the trainer: both rules on the loss and grad-norm series, with
attribution of each event to the layer whose grad norm deviated most and to rising attention
logits or log Z (host side, fed at each read-out; state saved in checkpoints)."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import numpy as np

from stability import metric_names as M
from stability.config import ProbesConfig
from stability.spikes import (
    OLMO2_RULE,
    OLMO_CORE_RULE,
    OnlineSpikeDetector,
    SpikeEvent,
    SpikeRule,
    attribute,
    events_to_frame,
    rising,
)

ATTRIBUTION_WINDOW = 128  # steps of per-layer history an event is judged against



def rules_from(cfg: ProbesConfig) -> tuple[SpikeRule, SpikeRule]:
    """The OLMo 2 and OLMo-core rules with the window and threshold of `cfg` (defaults: the
    papers' 1000 / 7 sigma and 128 / 6 sigma)."""
    olmo2 = dataclasses.replace(OLMO2_RULE, window=cfg.spike_window, sigma=cfg.spike_sigma,
                                min_history=cfg.spike_window)
    online = dataclasses.replace(OLMO_CORE_RULE, window=cfg.online_window, sigma=cfg.online_sigma,
                                 min_history=max(2, cfg.online_window // 2))
    return olmo2, online


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (checkpoints load with weights_only=True)."""
    return value.item() if hasattr(value, "item") else value


class SpikeMonitor:
    """Online detectors + the recent history needed to attribute their events."""

    def __init__(self, cfg: ProbesConfig | None = None) -> None:
        olmo2, online = rules_from(cfg or ProbesConfig())
        # (series, detector, score metric): the four detectors of DESIGN.md's spike/* keys.
        self.detectors = [
            (series, OnlineSpikeDetector(rule, series), key)
            for series, rule, key in ((M.TRAIN_LOSS, olmo2, M.SPIKE_SCORE_LOSS),
                                      (M.GRAD_NORM, olmo2, M.SPIKE_SCORE_GRAD_NORM),
                                      (M.TRAIN_LOSS, online, M.SPIKE_ONLINE_LOSS),
                                      (M.GRAD_NORM, online, M.SPIKE_ONLINE_GRAD_NORM))]
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
            if event is None:
                continue
            event.series = f"{series}@{detector.rule.name}"
            norms = np.asarray(self.layer_norms, dtype=np.float64)
            event.leading_layer, event.leading_sigma = attribute(
                len(norms) - 1, norms, ATTRIBUTION_WINDOW)
            event.log_z_rising = rising(np.asarray(self.log_z), len(self.log_z) - 1,
                                        ATTRIBUTION_WINDOW)
            if len(self.attn_max) >= 3:
                event.attn_logit_rising = rising(np.asarray(self.attn_max), len(self.attn_max) - 1,
                                                 len(self.attn_max) - 1)
            new.append(event)
        self.events.extend(new)
        return new

    def scores(self) -> dict[str, float]:
        """The spike/* metrics now (detectors that have judged nothing yet are left out)."""
        out = {key: detector.score for _, detector, key in self.detectors}
        out = {k: v for k, v in out.items() if v == v}  # drop NaN: nothing judged yet
        out[M.SPIKE_COUNT] = float(self.count)
        return out

    def frame(self):
        return events_to_frame(self.events)

    def state_dict(self) -> dict[str, Any]:
        return {
            "detectors": [d.state_dict() for _, d, _ in self.detectors],
            "layer_norms": [list(r) for r in self.layer_norms],
            "log_z": list(self.log_z),
            "attn_max": list(self.attn_max),
            "events": [{k: _plain(v) for k, v in vars(e).items()} for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for (_, detector, _), s in zip(self.detectors, state["detectors"]):
            detector.load_state_dict(s)
        self.layer_norms.extend(state["layer_norms"])
        self.log_z.extend(state["log_z"])
        self.attn_max.extend(state["attn_max"])
        self.events = [SpikeEvent(**e) for e in state["events"]]
