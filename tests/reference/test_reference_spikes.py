"""Our OLMo-core spike rule against OLMo-core's `StabilityMonitorCallback` itself: flag for flag
and score for score on long synthetic series (planted spikes, heavy tails, NaN and inf, a constant
stretch; fewer and more than the 10,000 steps of its running score), and through the trainer's
spike monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("olmo_core")

from olmo_core.train.callbacks.stability_monitor import StabilityMonitorCallback  # noqa: E402
from olmo_core.train.common import OPTIM_GRAD_NORM_METRIC, TRAIN_CE_LOSS_METRIC  # noqa: E402

from stability import metric_names as M  # noqa: E402
from stability.config import ProbesConfig  # noqa: E402
from stability.spike_monitor import SpikeMonitor  # noqa: E402
from stability.spikes import OlmoCoreStability  # noqa: E402


def _series(n: int, seed: int = 0, finite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    at = lambda frac: int(frac * n)  # noqa: E731
    loss = 3.0 + 0.05 * rng.standard_t(3.0, n)  # heavy tails: near-threshold points
    grad = np.abs(1.0 + 0.1 * rng.standard_t(2.0, n))
    loss[rng.choice(n, n // 500, replace=False)] += 1.0  # planted loss spikes
    grad[rng.choice(n, n // 400, replace=False)] *= 8.0  # planted grad-norm spikes
    if not finite:
        loss[[at(0.03), at(0.32)]] = [math.nan, math.inf]
        grad[[at(0.16), at(0.52)]] = [math.inf, math.nan]
    start, stop = at(0.56), at(0.59)
    loss[start:stop] = 2.5  # a constant stretch (std 0: no flags), then a jump
    loss[stop] = 2.6
    grad[start:at(0.575)] = 1.0
    return loss.astype(np.float32).astype(np.float64), grad.astype(np.float32).astype(np.float64)


def _reference(loss: np.ndarray, grad: np.ndarray) -> tuple[list[bool], list[dict]]:
    cb = StabilityMonitorCallback()
    flags, metrics = [], []
    for step, (x, g) in enumerate(zip(loss.tolist(), grad.tolist())):
        m = {TRAIN_CE_LOSS_METRIC: x, OPTIM_GRAD_NORM_METRIC: g}
        before = cb._total_spike_count
        cb.pre_log_metrics(step, m)
        flags.append(cb._total_spike_count > before)
        metrics.append({k: v for k, v in m.items() if k.startswith("spike/")})
    return flags, metrics


@pytest.mark.parametrize("n", [3000, 12500])
def test_flags_and_scores_equal_the_callback(n):
    loss, grad = _series(n)
    flags, metrics = _reference(loss, grad)
    ours = OlmoCoreStability()
    for step, (x, g) in enumerate(zip(loss.tolist(), grad.tolist())):
        events = ours.update(step, {"loss": x, "grad": g})
        assert bool(events) == flags[step], step
        want = metrics[step]
        assert ours.running_score == want.get("spike/SpikeScore"), step
        assert ours.total_score == want.get("spike/SpikeScore (total)"), step
    assert sum(flags) > 20  # the series exercise the rule
    if n > 10000:
        assert ours.score == ours.running_score is not None
    else:
        assert ours.score == ours.total_score is not None


def test_state_round_trip_continues_identically():
    loss, grad = _series(2000, seed=1)
    a = OlmoCoreStability()
    for step in range(1000):
        a.update(step, {"loss": loss[step], "grad": grad[step]})
    b = OlmoCoreStability()
    b.load_state_dict(a.state_dict())
    for step in range(1000, 2000):
        assert a.update(step, {"loss": loss[step], "grad": grad[step]}) == b.update(
            step, {"loss": loss[step], "grad": grad[step]})
    assert a.total_score == b.total_score


def test_spike_monitor_reports_the_callbacks_scores():
    """The trainer's monitor feeds CE loss and grad norm and logs the callback's metrics."""
    loss, grad = _series(600, seed=2, finite=True)  # the trainer stops at a non-finite value
    flags, metrics = _reference(loss, grad)
    monitor = SpikeMonitor(ProbesConfig())
    for step, (x, g) in enumerate(zip(loss.tolist(), grad.tolist())):
        monitor.update(step, {M.TRAIN_CE_LOSS: x, M.GRAD_NORM: g, M.LOGITS_LOG_Z_MEAN: 0.0}, [g])
    scores = monitor.scores()
    assert scores[M.SPIKE_OLMO_CORE_TOTAL] == metrics[-1]["spike/SpikeScore (total)"]
    assert scores[M.SPIKE_OLMO_CORE] == scores[M.SPIKE_OLMO_CORE_TOTAL]
    assert M.SPIKE_OLMO_CORE_RUNNING not in scores  # fewer than 10,000 steps
    olmo_core_steps = sorted({e.step for e in monitor.events if e.series.endswith("@olmo_core")})
    assert olmo_core_steps == [i for i, f in enumerate(flags) if f] and olmo_core_steps
