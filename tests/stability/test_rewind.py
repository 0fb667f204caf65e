"""Rewind and skip (`train.on_spike = "rewind"`): which snapshot a spike goes back to, the held-back
recorders, and a real run over a corrupted batch: the steps before the rewind are those of the
same run without rewinds, the steps after it train on the batches `skip_batches` further on,
and MLflow holds every step once."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from model.config import ConfigError
from stability import metric_names as M
from stability.callbacks.base import Callback, ReadOutEvent
from stability.callbacks.held import HeldBack
from stability.config import RewindConfig, load_config
from stability.rewind import DIVERGED, Rewinder, SnapshotRing, is_loss_spike
from stability.spikes import SpikeEvent
from stability.train import Trainer


def _event(step: int, series: str = f"{M.TRAIN_CE_LOSS}@online", action: str = "") -> SpikeEvent:
    return SpikeEvent(step, series, 9.0, 12.0, 5.0, 0.3, action=action)


def test_the_ring_goes_back_at_least_before_steps_else_to_its_oldest():
    ring = SnapshotRing(keep=3)
    for step in (0, 10, 20, 30):
        ring.push(step, {"w": torch.full((2,), float(step))})
    assert [s.step for s in ring.items] == [10, 20, 30]  # keep 3
    assert ring.target(spike_step=35, before=10).step == 20
    assert ring.target(spike_step=41, before=10).step == 30
    assert ring.target(spike_step=25, before=20).step == 10  # none that early: the oldest
    ring.drop_after(20)
    assert [s.step for s in ring.items] == [10, 20]


def test_a_snapshot_is_a_copy_the_training_step_cannot_change():
    ring = SnapshotRing(keep=2)
    live = {"w": torch.zeros(3), "opt": {"state": [torch.ones(2)]}, "n": 3}
    ring.push(0, live)
    live["w"].add_(1.0)
    live["opt"]["state"][0].mul_(5.0)
    snap = ring.items[-1].state
    assert snap["w"].tolist() == [0.0] * 3 and snap["opt"]["state"][0].tolist() == [1.0, 1.0]


def test_the_ring_holds_enough_to_reach_before_steps_behind_any_spike_of_a_read_out():
    # log_every 10, before 25: a spike at the first step of a read-out (R - 9) needs a snapshot
    # at or below R - 34, i.e. 4 boundaries back from R + 1, so 5 kept
    rewinder = Rewinder(RewindConfig(before=25), log_every=10)
    assert rewinder.ring.items.maxlen == 5
    for step in range(0, 110, 10):
        rewinder.ring.push(step, {})
    assert rewinder.ring.target(100 - 9, 25).step == 60


def test_trigger_is_the_first_loss_spike_or_divergence_and_respects_max_rewinds():
    rewinder = Rewinder(RewindConfig(max_rewinds=1), log_every=10)
    grad = _event(41, f"{M.GRAD_NORM}@olmo2")
    assert rewinder.trigger([grad], None, {}) is None  # a grad-norm spike alone: no rewind
    step, reason, value, spikes = rewinder.trigger(
        [grad, _event(44), _event(43, f"{M.TRAIN_CE_LOSS}@olmo_core")], None, {43: 8.5})
    assert (step, reason, value, [e.step for e in spikes]) == (43, f"{M.TRAIN_CE_LOSS}@olmo_core", 8.5, [43])
    step, reason, value, spikes = rewinder.trigger([], 47, {})
    assert (step, reason, spikes) == (47, DIVERGED, []) and math.isnan(value)
    assert rewinder.trigger([_event(44)], 47, {})[1] != DIVERGED  # the spike came first
    assert not is_loss_spike(_event(44, action="rewind"))  # one already acted on
    rewinder.record(43, "x", 8.5, 49, 30, 20)
    assert rewinder.left == 0 and rewinder.trigger([_event(44)], 47, {}) is None


class _Log(Callback):
    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def on_read_out(self, trainer, event):
        self.got.append(("read_out", event.step))

    def on_metrics(self, trainer, step, values):
        self.got.append(("metrics", step))

    def on_checkpoint(self, trainer, step):
        self.got.append(("checkpoint", step))


class _Trainer:
    def __init__(self, oldest: int) -> None:
        self.rewinder = Rewinder(RewindConfig(), log_every=10)
        self.rewinder.ring.push(oldest, {})


def test_held_back_recorders_hear_of_a_step_once_no_snapshot_can_take_it_back():
    log = _Log()
    held = HeldBack([log])
    trainer = _Trainer(oldest=0)
    for first in (0, 10, 20):
        held.on_read_out(trainer, ReadOutEvent(first + 9, rows=[(first, {}), (first + 9, {})]))
    held.on_metrics(trainer, 29, {M.EVAL_LOSS: 1.0})
    assert log.got == []  # the ring still starts at 0
    trainer.rewinder.ring.push(20, {})
    trainer.rewinder.ring.items.popleft()  # now the oldest snapshot is at 20
    held.on_read_out(trainer, ReadOutEvent(39, rows=[(30, {}), (39, {})]))
    assert log.got == [("read_out", 9), ("read_out", 19)]
    held.on_rewind(trainer, type("R", (), {"to_step": 30})())  # takes back 30..39, not 20..29
    held.on_checkpoint(trainer, 40)
    assert log.got[2:] == [("read_out", 29), ("metrics", 29), ("checkpoint", 40)]


def test_rewind_needs_the_spike_detectors_and_a_matching_snapshot_interval():
    with pytest.raises(ConfigError, match=r"train.on_spike: 'rewind' needs the spike detectors"):
        load_config("olmo2-tiny", overrides=['train.on_spike="rewind"', "probes.spikes=false"]).validate()
    with pytest.raises(ConfigError, match=r"rewind.every: must be 0 or a multiple of train.log_every"):
        load_config("olmo2-tiny", overrides=['train.on_spike="rewind"', "rewind.every=7"]).validate()
    with pytest.raises(ConfigError, match=r"train.on_spike: 'skip' is not one of \(log, rewind\)"):
        load_config("olmo2-tiny", overrides=['train.on_spike="skip"']).validate()


STEPS = 80
BAD = 40  # batches 40 and 41 are uniform random tokens: the CE loss jumps from ~5.5 to ~8


def _run(tmp_path, name: str, *extra: str, batches: list[int] | None = None):
    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/{name}.db"', f'train.checkpoint_dir="{tmp_path}/{name}"',
        "data.max_bytes=300000", f"train.steps={STEPS}", "train.log_every=10", "train.threads=1",
        "train.batch_size=4", "train.seq_len=32", "train.eval_every=0", "probes.online_window=16",
        f"data.bad_batches=[{BAD}, {BAD + 1}]", *extra])
    trainer = Trainer(cfg, progress=False)
    if batches is not None:
        real = trainer.data.train_batch

        def recording(index, batch_size):
            batches.append(index)
            return real(index, batch_size)

        trainer.data.train_batch = recording
    result = trainer.run()
    client = MlflowClient(cfg.tracking.uri)
    hist = {k: [(m.step, m.value) for m in client.get_metric_history(result.run_id, k)]
            for k in client.get_run(result.run_id).data.metrics}
    return trainer, result, client, hist


def test_a_rewind_goes_back_skips_the_bad_batches_and_logs_every_step_once(tmp_path):
    _, _, _, plain = _run(tmp_path, "plain")
    batches: list[int] = []
    trainer, result, client, hist = _run(
        tmp_path, "rewind", 'train.on_spike="rewind"', "rewind.before=10", "rewind.skip_batches=15",
        batches=batches)
    assert result.status == "finished"
    (rewind,) = trainer.rewinder.rewinds
    # the spike at step 40 is found at the read-out of step 49; back to the snapshot before 30
    assert (rewind.spike_step, rewind.detected_at, rewind.to_step, rewind.data_offset) == (40, 49, 30, 15)
    assert rewind.reason.startswith(M.TRAIN_CE_LOSS) and rewind.value > 7.0
    # steps 0..49 on batches 0..49, then again from 30 on batches 45.., the bad ones skipped
    assert batches == list(range(50)) + list(range(45, STEPS + 15))
    for key in (M.TRAIN_LOSS, M.GRAD_NORM, M.layer_key(M.GRAD_NORM, 0)):
        steps = [s for s, _ in hist[key]]
        assert len(steps) == len(set(steps)), key  # no step twice
    assert [s for s, _ in hist[M.TRAIN_LOSS]] == list(range(STEPS))
    before = [v for s, v in hist[M.TRAIN_LOSS] if s < 30]
    assert before == [v for s, v in plain[M.TRAIN_LOSS] if s < 30]  # bitwise the run without
    kept = dict(hist[M.TRAIN_LOSS])
    assert max(v for s, v in kept.items() if s >= 30) < 7.0  # the spike is not in the kept series
    assert max(dict(plain[M.TRAIN_LOSS])[s] for s in (40, 41)) > 7.0  # ...it is without rewinds
    run = client.get_run(result.run_id)
    assert run.data.tags["rewinds"] == "1" and run.data.metrics[M.TRAIN_REWINDS] == 1.0
    art = client.download_artifacts(result.run_id, "rewinds.csv", str(tmp_path))
    assert pd.read_csv(art)[["spike_step", "to_step", "skipped_batches"]].values.tolist() == [[40, 30, 15]]
    spikes = pd.read_csv(client.download_artifacts(result.run_id, "spikes.csv", str(tmp_path)))
    acted = spikes[spikes["action"] == "rewind"]
    assert acted["step"].tolist() == [40] and acted["series"].str.startswith(M.TRAIN_CE_LOSS).all()


def test_rewinds_stop_at_max_rewinds(tmp_path):
    trainer, result, _, hist = _run(
        tmp_path, "max", 'train.on_spike="rewind"', "rewind.before=10", "rewind.skip_batches=0",
        "rewind.max_rewinds=2")
    # skipping nothing meets the bad batches again: two rewinds, then the spike is only logged
    assert [r.to_step for r in trainer.rewinder.rewinds] == [30, 30]
    assert max(dict(hist[M.TRAIN_LOSS])[s] for s in (40, 41)) > 7.0
    assert [s for s, _ in hist[M.TRAIN_LOSS]] == list(range(STEPS))
