"""The tracking store goes away mid-run and comes back: a real training run (the Trainer in this
process, checkpoints and evals included) never pauses longer than about one read-out, and every
point arrives, once.

- default suite: a 3 s outage of the run's store (its sends fail as on a refused connection);
- `-m slow`: the issue's case, a real `mlflow server` on loopback killed (SIGTERM, then SIGKILL)
  for 30 s and restarted on the same port and database while training goes on.

The Tracker alone under outages (spool, bounded finish, replay, a real server stopped and
restarted): tests/stability/test_tracking.py.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import pytest
from mlflow.tracking import MlflowClient

from stability import metric_names as M
from stability.callbacks import OnReadOut
from stability.callbacks.tracking import TrackingCallback
from stability.config import load_config
from stability.train import Trainer
from tests.faults.helpers import assert_each_step_once, histories
from tests.stability.test_tracking import MlflowServer, _Outage

LOG = 5
WARM_READOUTS = 6  # read-outs before the outage: they give the typical interval
AFTER_READOUTS = 4  # read-outs after the spool was sent, then the run ends


class OutageDuringTraining:
    """Driven by the trainer's read-outs: take the store down after WARM_READOUTS (`down()`, in a
    thread: training goes on), bring it back after `down_s` (`up()`), and once the spool has been
    sent end the run a few read-outs later (lowering train.steps; the schedule is constant)."""

    def __init__(self, trainer: Trainer, down: Callable[[], None], up: Callable[[], None],
                 down_s: float) -> None:
        self.trainer, self.down, self.up, self.down_s = trainer, down, up, down_s
        self.times: list[float] = []
        self.down_at: float | None = None
        self.up_at: float | None = None
        self.thread: threading.Thread | None = None
        self.sent_at_readout: int | None = None

    def _outage(self) -> None:
        self.down()
        self.down_at = time.monotonic()
        time.sleep(self.down_s)
        self.up()
        self.up_at = time.monotonic()

    def __call__(self, step: int, last: dict) -> None:
        self.times.append(time.monotonic())
        n = len(self.times)
        if n == WARM_READOUTS:
            self.thread = threading.Thread(target=self._outage, daemon=True)
            self.thread.start()
        elif self.up_at is not None and self.sent_at_readout is None \
                and not tracker_of(self.trainer).spool.pending:
            self.sent_at_readout = n
        elif self.sent_at_readout is not None and n == self.sent_at_readout + AFTER_READOUTS:
            self.trainer.cfg.train.steps = step + LOG


def tracker_of(trainer: Trainer):
    return trainer.callbacks.find(TrackingCallback).tracker


def _trainer(tmp_path, uri: str) -> Trainer:
    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="{uri}"', f'train.checkpoint_dir="{tmp_path}/ckpt"', "data.max_bytes=300000",
        "train.threads=1", "train.steps=20000", f"train.log_every={LOG}", "train.checkpoint_every=50",
        "train.eval_every=100", 'schedule.kind="constant"'])
    return Trainer(cfg, progress=False)


def _check(trainer: Trainer, outage: OutageDuringTraining, result, read_uri: str) -> None:
    outage.thread.join(timeout=120)
    assert outage.up_at is not None and outage.sent_at_readout is not None, "no outage happened"
    assert result.status == "finished"
    assert not tracker_of(trainer).spool.path.exists()

    gaps = [b - a for a, b in zip(outage.times, outage.times[1:])]
    typical = statistics.median(gaps[: WARM_READOUTS - 1])
    during = [t for t in outage.times if outage.down_at <= t <= outage.up_at]
    # Trained on through the outage: read-outs kept coming while the store was away ...
    assert len(during) >= 0.3 * (outage.up_at - outage.down_at) / typical, (len(during), typical)
    # ... and none waited for it: the longest interval stays about one read-out (checkpoints, a
    # restarting server and a busy machine add some), never a store timeout (10 s) or retries.
    assert max(gaps) < 4 * typical + 1.5, (max(gaps), typical, sorted(gaps)[-5:])

    client = MlflowClient(read_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
    hist = histories(client, run)
    assert_each_step_once(hist, result.steps)  # every point arrived, once
    evals = [s - 1 for s in range(100, result.steps, 100)] + [result.steps - 1]
    assert [s for s, _ in hist[M.EVAL_LOSS]] == evals
    assert {"config.toml", M.SPIKES_ARTIFACT} <= {a.path for a in client.list_artifacts(result.run_id)}


def test_store_away_3s_mid_run_training_goes_on_every_point_once(tmp_path, torch_threads, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trainer = _trainer(tmp_path, uri)
    fault: dict[str, _Outage] = {}

    def down() -> None:
        fault["outage"] = _Outage(tracker_of(trainer))  # the tracker exists once the run started
        fault["outage"].down.set()

    outage = OutageDuringTraining(trainer, down, lambda: fault["outage"].down.clear(), 3.0)
    trainer.callbacks.append(OnReadOut(outage))
    _check(trainer, outage, trainer.run(), uri)
    err = capsys.readouterr().err
    assert "tracking store unreachable" in err and "tracking: store back after" in err


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_server_killed_30s_mid_run_training_goes_on_every_point_once(tmp_path, server, torch_threads):
    trainer = _trainer(tmp_path, server.uri)
    outage = OutageDuringTraining(trainer, server.stop, server.start, 30.0)
    trainer.callbacks.append(OnReadOut(outage))
    _check(trainer, outage, trainer.run(), server.db_uri)  # read back from the server's database
