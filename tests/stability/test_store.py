"""The store schema against a real sqlite MLflow store: statuses and their MLflow status, the
experiment kind, ending runs, UI links, recipe deviation tags; and that it imports no MLflow or
torch by itself."""

from __future__ import annotations

import subprocess
import sys

from stability import store
from stability.config import load_config
from stability.recipes import recipe_deviations


def test_every_status_has_an_mlflow_status_that_reads_back():
    assert set(store.MLFLOW_STATUS) == set(store.STATUSES)
    for status, mlflow_status in store.MLFLOW_STATUS.items():
        back = store.status_from_mlflow(mlflow_status)
        assert back == status or (status == store.DIVERGED and back == store.FINISHED)
    assert store.status_of({"status": "diverged"}, "FINISHED") == "diverged"
    assert store.status_of({}, "KILLED") == "interrupted" and store.status_of({}, "SCHEDULED") == "running"


def test_experiments_are_model_training_and_runs_end_with_their_status(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = store.client(uri)
    made_by_hand = client.create_experiment("old")  # an experiment without the kind tag
    assert store.experiment_id(client, "old", uri) == made_by_hand
    exp_id = store.experiment_id(client, "new", uri)
    for name in ("new", "old"):
        exp = client.get_experiment_by_name(name)
        assert exp.tags[store.EXPERIMENT_KIND_TAG] == store.MODEL_TRAINING_KIND
    assert client.get_experiment(exp_id).artifact_location == store.artifact_root_for(uri)
    for status in (store.INTERRUPTED, store.DIVERGED, store.FAILED):
        run = client.create_run(exp_id).info.run_id
        store.end_run(client, run, status, {"interrupted_at_step": 12, "skipped": None})
        got = client.get_run(run)
        assert got.data.tags["status"] == status and got.info.status == store.MLFLOW_STATUS[status]
        assert "skipped" not in got.data.tags
    run = client.create_run(exp_id).info.run_id
    store.mark_failed(client, run, "Traceback: boom")
    assert client.get_run(run).info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(run)] == ["traceback.txt"]


def test_ui_links_open_the_runs_view():
    assert store.ui_url("http://host:5000/", "3", "abc") == (
        "http://host:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    local = store.ui_hint("sqlite:////x/mlflow.db", "1")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db, then http://127.0.0.1:5000/")
    assert store.safe_uri("https://user:pw@host") is None and store.param_value(None) == "None"


def test_recipe_deviations_name_the_knobs_a_user_filters_on():
    assert recipe_deviations(load_config("olmo2-small")) == ("olmo2", {})
    cfg = load_config("olmo2-small", overrides=["model.qk_norm=none", "model.clip_qkv=8.0"])
    assert recipe_deviations(cfg) == ("olmo2", {"model.qk_norm": "none", "model.clip_qkv": 8.0})
    old = load_config("olmo0424-small", overrides=["optim.eps=1e-8"])
    assert recipe_deviations(old) == ("olmo0424", {"optim.eps": 1e-8})
    mitchell = load_config("olmo2-small", overrides=["model.init=mitchell", "model.init_std=0.5"])
    assert recipe_deviations(mitchell) == ("olmo2", {"model.init": "mitchell"})  # std unused by it


def test_importing_the_schema_imports_neither_mlflow_nor_torch():
    code = "import sys, stability.store; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
