"""The backend registry: every name builds its runner, and bad combinations are one-line errors."""

from __future__ import annotations

import pytest

from ablations.backends import BACKENDS, RunOptions, runner_for
from ablations.runner import GridRunner, LocalRunner
from ablations.slurm import SlurmRunner
from ablations.spec import load_spec
from model.config import ConfigError


def test_every_backend_builds_a_grid_runner(tmp_path):
    spec = load_spec("quick")
    uris = {"local": f"sqlite:///{tmp_path}/mlflow.db", "submitit-local": f"sqlite:///{tmp_path}/m.db",
            "slurm": "http://127.0.0.1:5999"}
    kinds = {"local": LocalRunner, "submitit-local": SlurmRunner, "slurm": SlurmRunner}
    assert set(BACKENDS) == set(kinds)
    for name in BACKENDS:
        runner = runner_for(name, spec, RunOptions(tracking_uri=uris[name], runs_dir=tmp_path))
        assert isinstance(runner, kinds[name]) and isinstance(runner, GridRunner)
        assert runner.runs_dir == tmp_path.resolve() / "quick"


@pytest.mark.parametrize("backend, options, message", [
    ("pbs", RunOptions(), "--backend: 'pbs' not in (local, slurm, submitit-local)"),
    ("local", RunOptions(jobs=0), "--jobs: must be >= 1"),
    ("local", RunOptions(slurm_params=["slurm_partition=gpu"]), "--slurm: only with --backend slurm"),
    ("slurm", RunOptions(jobs=2), "--jobs: only with --backend local"),
    ("slurm", RunOptions(tracking_uri="sqlite:///x.db"), "--tracking-uri: Slurm workers need"),
])
def test_bad_combinations_are_one_line_errors(backend, options, message, tmp_path):
    options.runs_dir = tmp_path
    with pytest.raises(ConfigError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        runner_for(backend, load_spec("quick"), options)
