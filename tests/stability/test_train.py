"""The trainer end to end on the default corpus: learning, bitwise resume, divergence, MLflow."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from stability import metric_names as M
from stability.cli import main
from stability.config import load_config
from stability.train import Trainer


def _cfg(tmp_path, *overrides: str):
    return load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/mlflow.db"',
        f'train.checkpoint_dir="{tmp_path}/ckpt"',
        "data.max_bytes=300000",
        *overrides,
    ])


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_thirty_steps_lower_the_loss(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=30", "train.log_every=5")
    result = Trainer(cfg, progress=False).run()
    assert result.status == "finished" and result.steps == 30
    losses = [v for _, v in _history(cfg.tracking.uri, result.run_id, M.TRAIN_LOSS)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert result.eval_loss < math.log(cfg.model.vocab_size)  # better than uniform

    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    assert run.data.tags["status"] == "finished"
    assert run.data.tags["recipe"] == "olmo2"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["model.block"] == "reordered_norm"
    for key in (M.TRAIN_CE_LOSS, M.TRAIN_Z_LOSS, M.GRAD_NORM, M.TRAIN_LR, M.TRAIN_TOKENS_PER_S,
                M.EVAL_LOSS):
        assert key in run.data.metrics, key
    artifacts = [a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(result.run_id)]
    assert "config.toml" in artifacts


class _Crash(Exception):
    pass


def test_resume_is_bitwise_and_logs_each_step_once(tmp_path, monkeypatch):
    common = ("train.steps=20", "train.log_every=5", "train.checkpoint_every=10",
              "optim.skip_step=true", "optim.skip_step_window=8")
    straight = Trainer(_cfg(tmp_path / "a", *common), progress=False)
    straight.run()

    cfg = _cfg(tmp_path / "b", *common)
    first = Trainer(cfg, progress=False)
    real_step = Trainer.train_step

    def crash_at_17(self, step):
        if step == 17:
            raise _Crash
        real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", crash_at_17)
    with pytest.raises(_Crash):
        first.run()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = Trainer(cfg, resume=True, progress=False)
    result = resumed.run()
    assert result.run_id == first.run_id and result.steps == 20

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])
    steps = [s for s, _ in _history(cfg.tracking.uri, result.run_id, M.TRAIN_LOSS)]
    assert steps == list(range(20))  # steps 10..14 were logged before the crash: not twice
    ref = _history(straight.cfg.tracking.uri, straight.run_id, M.TRAIN_LOSS)
    assert ref == _history(cfg.tracking.uri, result.run_id, M.TRAIN_LOSS)


def test_nan_marks_the_run_diverged_at_its_step(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "train.steps=20", "train.log_every=4")
    trainer = Trainer(cfg, progress=False)
    forward = trainer.model.features
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        if not (torch.is_grad_enabled() and trainer.model.training):  # probe forwards
            return out
        calls["n"] += 1
        if calls["n"] != 7:  # the 7th training forward is step 6
            return out
        return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")

    monkeypatch.setattr(trainer.model, "features", poisoned)
    result = trainer.run()
    assert result.status == "diverged" and result.diverged_at_step == 6
    assert result.steps <= 8  # found at the next read-out, not later
    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    assert run.data.tags["status"] == "diverged"
    assert run.data.tags["diverged_at_step"] == "6"
    steps = [s for s, _ in _history(cfg.tracking.uri, result.run_id, M.TRAIN_LOSS)]
    assert steps == list(range(6))


def test_same_seed_same_batches_and_init_across_arms(tmp_path):
    a = Trainer(_cfg(tmp_path, "tracking.enabled=false"), progress=False)
    b = Trainer(_cfg(tmp_path, "tracking.enabled=false", "model.qk_norm=none",
                     "model.clip_qkv=8.0"), progress=False)
    assert torch.equal(a.data.train_batch(3, 4).input_ids, b.data.train_batch(3, 4).input_ids)
    assert torch.equal(a.model.embed.weight, b.model.embed.weight)
    c = Trainer(_cfg(tmp_path, "tracking.enabled=false", "train.seed=1"), progress=False)
    assert not torch.equal(a.data.train_batch(3, 4).input_ids, c.data.train_batch(3, 4).input_ids)
    assert not torch.equal(a.model.embed.weight, c.model.embed.weight)


def test_cli_train_logs_to_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--preset", "olmo0424-tiny", "--set", "train.steps=4", "--set",
               "train.log_every=2", "--set", "data.max_bytes=200000", "--run-name", "cli<run>",
               "--experiment", "cli-test", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "status: finished after 4 steps" in out and "mlflow ui" in out
    client = MlflowClient("sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("cli-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "cli<run>" and run.data.tags["recipe"] == "olmo0424"
    assert (tmp_path / "runs" / "cli_run_" / "latest.json").exists()


def test_nested_run_and_attach_without_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("grid")
    parent = client.create_run(exp, run_name="grid").info.run_id
    child = client.create_run(exp, run_name="cell").info.run_id  # as a runner would, pre-created
    cfg = _cfg(tmp_path, "train.steps=6", "train.log_every=3", 'tracking.experiment="grid"',
               f'tracking.parent_run_id="{parent}"', 'tracking.arm="no_qk_norm"',
               f'tracking.run_id="{child}"')
    result = Trainer(cfg, progress=False).run()
    assert result.run_id == child
    again = Trainer(cfg, progress=False)  # a rerun that finds no usable checkpoint dir
    again.ckpt_dir = tmp_path / "elsewhere"
    again.run()
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["arm"] == "no_qk_norm"
    assert [s for s, _ in _history(uri, child, M.TRAIN_LOSS)] == list(range(6))  # once each
