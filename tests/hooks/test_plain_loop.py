"""`StabilityMonitor` in a plain PyTorch loop: per-layer and per-part grad norms equal an
independent computation from the layers' .grad tensors, every metric lands once per step, the
run carries the tags reports pair by, and the dense parts and spikes.csv are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from stability import metric_names as M
from stability.dense import read_dense
from stability.hooks import StabilityMonitor
from tests.hooks.helpers import BLOCKS, MODELS, assert_once_per_step, history, layer_norms

STEPS, LOG, EVERY, CLIP = 7, 3, 2, 0.5


def train(name: str, corpus, uri: str, out_dir, **options):
    """A plain loop with its own clipping; returns (monitor, pre-clip per-layer norms per step,
    pre-clip global norms, per-part norms at each step)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    blocks = BLOCKS[name]
    layers, totals, parts = [], [], []
    with StabilityMonitor(model, opt, tracking_uri=uri, output_dir=str(out_dir), log_every=LOG,
                          every=EVERY, clip_grad_norm=CLIP, **options) as monitor:
        for step in range(STEPS):
            batch = corpus.train_batch(step, 4)
            loss = model(input_ids=batch.input_ids, labels=batch.input_ids).loss
            loss.backward()
            monitor.after_backward(loss)
            layers.append(layer_norms(model, blocks))
            block0 = model.get_submodule(blocks)[0]
            parts.append({part: float(torch.linalg.vector_norm(torch.cat(
                [p.grad.reshape(-1) for n, p in block0.named_parameters() if pick(name, n) == part])))
                for part in ("attn", "mlp", "norms")})
            totals.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
            opt.step()
            monitor.after_step()
            opt.zero_grad()
    return monitor, layers, totals, parts


def pick(model_name: str, param: str) -> str:
    """The part of a block parameter, spelled out per family (independent of the layer maps)."""
    if "norm" in param or param.startswith(("ln_", "input_layernorm", "post_")):
        return "norms"
    return "attn" if param.startswith(("self_attn.", "attn.")) else "mlp"


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2", "qwen3"])
def test_plain_loop_matches_independent_norms(name, corpus, mlflow_uri, tmp_path) -> None:
    monitor, layers, totals, parts = train(name, corpus, mlflow_uri, tmp_path / "run",
                                           arm="base", seed=1, experiment="hooks")
    hist = history(mlflow_uri, monitor.run_id)
    # headline series: every step, once
    assert [s for s, _ in hist[M.GRAD_NORM]] == list(range(STEPS))
    assert [v for _, v in hist[M.GRAD_NORM]] == pytest.approx(totals, rel=1e-5)
    coef = [min(1.0, CLIP / (t + 1e-6)) for t in totals]
    assert [v for _, v in hist[M.GRAD_CLIP_COEF]] == pytest.approx(coef, rel=1e-5)
    # per layer: MLflow at probe steps, the dense artifact every step
    probe_steps = [s for s in range(STEPS) if s % EVERY == 0]
    for i in range(len(layers[0])):
        logged = hist[M.layer_key(M.GRAD_NORM, i)]
        assert [s for s, _ in logged] == probe_steps
        assert [v for _, v in logged] == pytest.approx([layers[s][i] for s in probe_steps], rel=1e-5)
    dense = read_dense(tmp_path / "run" / "dense")
    g = dense[dense.key == M.GRAD_NORM].pivot(index="step", columns="layer", values="value")
    assert g.to_numpy() == pytest.approx(np.array(layers), rel=1e-5)
    for part, key in (("attn", M.GRAD_NORM_ATTN), ("mlp", M.GRAD_NORM_MLP), ("norms", M.GRAD_NORM_NORMS)):
        assert [v for _, v in hist[M.layer_key(key, 0)]] == pytest.approx(
            [parts[s][part] for s in probe_steps], rel=1e-5)
    assert_once_per_step(hist, list(hist))
    run = MlflowClient(mlflow_uri).get_run(monitor.run_id)
    tags = run.data.tags
    assert (tags["arm"], tags["seed"], tags["status"]) == ("base", "1", "finished")
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(monitor.run_id)}
    assert {M.SPIKES_ARTIFACT, "dense"} <= artifacts


def test_an_exception_in_the_loop_ends_the_run_failed(corpus, mlflow_uri, tmp_path) -> None:
    model = MODELS["llama"]()
    monitor = StabilityMonitor(model, tracking_uri=mlflow_uri, output_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"), monitor:
        batch = corpus.train_batch(0, 2)
        model(input_ids=batch.input_ids, labels=batch.input_ids).loss.backward()
        monitor.after_backward()
        monitor.after_step()
        raise RuntimeError("boom")
    run = MlflowClient(mlflow_uri).get_run(monitor.run_id)
    assert (run.data.tags["status"], run.info.status) == ("failed", "FAILED")
    assert M.UPDATE_RMS in monitor.skipped  # no optimizer: no update statistics, and it says so
