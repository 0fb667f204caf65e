"""`stability.hooks.hf.StabilityCallback` under the HF `Trainer` on tiny OLMo 2, Llama and GPT-2:
per-layer grad norms equal those computed from the layers' .grad at every step, the logged norm
is the pre-clip one (HF's own `grad_norm`) with HF's clipping left in place, every metric lands
once per step, and with HF's MLflow integration on there is one run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from transformers import Trainer, TrainerCallback, TrainingArguments

from stability import metric_names as M
from stability.dense import read_dense
from stability.hooks.hf import StabilityCallback
from tests.hooks.helpers import BLOCKS, MODELS, assert_once_per_step, history, layer_norms

STEPS = 6


class GradsBeforeStep(TrainerCallback):
    """Records the per-layer norms of the gradients the optimizer is about to apply."""

    def __init__(self, blocks: str) -> None:
        self.blocks, self.norms = blocks, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append(layer_norms(model, self.blocks))


def dataset(corpus, n: int = 32) -> list[dict[str, torch.Tensor]]:
    rows = corpus.train_batch(0, n).input_ids
    return [{"input_ids": r, "labels": r} for r in rows]


def train(name, corpus, tmp_path, max_grad_norm: float, report_to: str = "none", **options):
    torch.manual_seed(0)
    model = MODELS[name]()
    probe = GradsBeforeStep(BLOCKS[name])
    callback = StabilityCallback(log_every=2, every=2, **options)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=STEPS, learning_rate=3e-3,
                             per_device_train_batch_size=4, logging_steps=1, report_to=report_to,
                             save_strategy="no", use_cpu=True, disable_tqdm=True,
                             max_grad_norm=max_grad_norm, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset(corpus), callbacks=[probe, callback]).train()
    return callback.monitor, probe.norms


@pytest.mark.parametrize("name", ["olmo2", "llama", "gpt2"])
def test_per_layer_norms_equal_the_layers_grads(name, corpus, mlflow_uri, tmp_path) -> None:
    monitor, norms = train(name, corpus, tmp_path, max_grad_norm=0.0, tracking_uri=mlflow_uri)
    dense = read_dense(tmp_path / "out" / "stability" / "dense")
    g = dense[dense.key == M.GRAD_NORM].pivot(index="step", columns="layer", values="value")
    assert g.index.tolist() == list(range(STEPS))
    assert g.to_numpy() == pytest.approx(np.array(norms), rel=1e-5)
    hist = history(mlflow_uri, monitor.run_id)
    for i in range(len(norms[0])):
        logged = hist[M.layer_key(M.GRAD_NORM, i)]
        assert [s for s, _ in logged] == list(range(0, STEPS, 2))
        assert [v for _, v in logged] == pytest.approx([norms[s][i] for s in range(0, STEPS, 2)], rel=1e-5)
    assert [s for s, _ in hist[M.TRAIN_LOSS]] == list(range(STEPS))
    assert_once_per_step(hist, list(hist))


def test_mlflow_integration_on_one_run_and_pre_clip_norm(corpus, mlflow_uri, tmp_path,
                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # HF's integration creates the experiment (artifacts in ./mlruns)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hooks-hf")
    clip = 0.25  # below every norm of this run: each step is clipped
    monitor, clipped = train("llama", corpus, tmp_path, max_grad_norm=clip, report_to="mlflow",
                             arm="base", seed=7)
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("hooks-hf")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [monitor.run_id]
    hist = history(mlflow_uri, monitor.run_id)
    ours = [v for _, v in hist[M.GRAD_NORM]]
    hf = [v for _, v in hist["grad_norm"]]  # HF logs its pre-clip norm at global_step = ours + 1
    assert [s for s, _ in hist["grad_norm"]] == [s + 1 for s, _ in hist[M.GRAD_NORM]]
    assert ours == pytest.approx(hf, rel=1e-5)
    coef = [v for _, v in hist[M.GRAD_CLIP_COEF]]
    assert coef == pytest.approx([clip / (n + 1e-6) for n in ours], rel=1e-5) and max(coef) < 1
    dense = read_dense(tmp_path / "out" / "stability" / "dense")
    pre = dense[dense.key == M.GRAD_NORM].pivot(index="step", columns="layer", values="value")
    # HF clipped what the optimizer saw; the pre-clip per-layer norms scale to it exactly
    assert pre.to_numpy() * np.array(coef)[:, None] == pytest.approx(np.array(clipped), rel=1e-4)
    run = client.get_run(monitor.run_id)
    assert (run.data.tags["arm"], run.data.tags["seed"], run.data.tags["status"]) == ("base", "7", "finished")
    assert_once_per_step(hist, [k for k in hist if "/" in k])


CRASH = """
import sys, torch
from transformers import Trainer, TrainingArguments, TrainerCallback
from stability.hooks.hf import StabilityCallback
from tests.hooks.helpers import MODELS

class Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            raise RuntimeError("the host loop broke")

rows = torch.randint(0, 512, (16, 32))
args = TrainingArguments(output_dir=sys.argv[2], max_steps=8, per_device_train_batch_size=4,
                         report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
cb = StabilityCallback(tracking_uri=sys.argv[1], experiment="crash", log_every=1)
Trainer(model=MODELS["llama"](), args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows],
        callbacks=[Boom(), cb]).train()
"""


@pytest.mark.slow  # a fresh interpreter importing transformers: ~25 s
def test_a_run_the_hf_trainer_never_ended_is_marked_failed(mlflow_uri, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", CRASH, mlflow_uri, str(tmp_path / "out")], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "the host loop broke" in done.stderr
    assert "marked failed" in done.stderr
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("crash").experiment_id])
    assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"
