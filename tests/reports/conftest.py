"""Fixtures shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reports.mlflow_store import template_db


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database with its schema (made once: creating it takes seconds)."""
    return template_db(tmp_path_factory.mktemp("mlflow-template"))
