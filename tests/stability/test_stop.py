"""Stop signals in process: a second Ctrl-C while the emergency checkpoint is written leaves the
previous checkpoint intact and the run resumable; the flag's rules; signal names on the CLI."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from model.config import ConfigError
from stability import metric_names as M
from stability.callbacks import OnReadOut
from stability.checkpoint import list_checkpoints, load_latest, save_checkpoint, verify
from stability.config import load_config
from stability.stop import Stopped, StopRequest, exit_code, parse_signals
from stability.train import Trainer


def _cfg(tmp_path, *overrides: str):
    return load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/mlflow.db"', f'train.checkpoint_dir="{tmp_path}/ckpt"',
        "data.max_bytes=300000", "train.steps=20", "train.log_every=5", "train.checkpoint_every=5",
        "train.eval_every=0", *overrides])


def test_a_second_ctrl_c_during_the_emergency_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    trainer = Trainer(cfg, progress=False)
    real_save = torch.save

    def first_signal_at_step_10(step, last):
        if step == 10:
            signal.raise_signal(signal.SIGTERM)  # the run stops after step 11, between read-outs

    def save_then_second_ctrl_c(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if obj.get("step") == 11:  # the emergency checkpoint's file is written, not yet in place
            signal.raise_signal(signal.SIGINT)

    trainer.callbacks.append(OnReadOut(first_signal_at_step_10))
    monkeypatch.setattr(torch, "save", save_then_second_ctrl_c)
    with pytest.raises(Stopped) as stopped:
        trainer.run()
    monkeypatch.setattr(torch, "save", real_save)
    assert stopped.value.signum == signal.SIGINT and trainer.step == 11
    ckpt_dir = tmp_path / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step_00000005.pt", "step_00000010.pt"]
    assert all(verify(p) is None for p in list_checkpoints(ckpt_dir))
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temporaries left
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(trainer.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the run

    result = Trainer(cfg, resume=True, progress=False).run()  # from step 10, into the same run
    assert result.status == "finished" and result.run_id == trainer.run_id
    steps = [m.step for m in client.get_metric_history(result.run_id, M.TRAIN_LOSS)]
    assert sorted(steps) == list(range(20))


def test_an_interrupt_between_rename_and_checksum_removes_the_unverifiable_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(2)})
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("step_00000002.pt"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(2)})
    monkeypatch.setattr(os, "replace", real_replace)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert load_latest(tmp_path)["step"] == 1


def test_the_first_signal_asks_a_repeat_is_ignored_a_second_sigint_aborts():
    request = StopRequest()
    assert not request.requested
    request.handle(signal.SIGTERM, None)
    request.handle(signal.SIGUSR2, None)  # a launcher passing on what we already got
    request.handle(signal.SIGTERM, None)
    assert request.requested and request.name == "SIGTERM"
    with pytest.raises(Stopped) as second:
        request.handle(signal.SIGINT, None)
    assert second.value.signum == signal.SIGINT and exit_code(second.value) == 130
    assert exit_code(signum=signal.SIGTERM) == 143


def test_signal_names():
    assert parse_signals("usr1, SIGHUP,USR1") == (signal.SIGUSR1, signal.SIGHUP)
    assert parse_signals("none") == ()
    for bad in ("USR3", "KILL", "SIGSTOP"):
        with pytest.raises(ConfigError, match=r"^--stop-signal: .* is not a signal that can be caught"):
            parse_signals(bad)
