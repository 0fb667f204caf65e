"""Fixtures of the hook tests: the default corpus and an MLflow store per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hooks.helpers import SEQ, VOCAB


@pytest.fixture(scope="session")
def corpus():
    """Packed rows of the default corpus (this Python's stdlib), BPE-tokenized to VOCAB."""
    from stability.data import DataConfig, build_data
    return build_data(DataConfig(max_bytes=300_000), vocab_size=VOCAB, seq_len=SEQ, seed=0)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database (creating the schema takes seconds: copy it instead)."""
    from mlflow import MlflowClient
    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path, _template_db) -> str:
    shutil.copyfile(_template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(autouse=True)
def _fresh_mlflow_globals():
    """HF's integration sets MLflow's process-wide tracking URI and run: undo after each test."""
    yield
    import mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
