"""The examples run end to end at a few steps and leave a finished run in the store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow import MlflowClient

from stability import metric_names as M

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, tmp_path: Path, uri: str) -> str:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--steps", "4", "--tracking-uri", uri, "--out", str(tmp_path / name)])


@pytest.mark.parametrize("name", ["plain_loop", "hf_trainer", "lightning_module"])
def test_example_runs(name, tmp_path, mlflow_uri) -> None:
    run_id = run_example(name, tmp_path, mlflow_uri)
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.tags["status"] == "finished"
    assert M.GRAD_NORM in run.data.metrics and M.layer_key(M.GRAD_NORM, 1) in run.data.metrics
