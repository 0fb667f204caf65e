"""The grid backends by name: each builds a `GridRunner` from the spec and the run's options.

A new backend is its runner (a `GridRunner` subclass with its `run`) and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ablations.runner import GridRunner
from ablations.spec import GridSpec
from model.config import ConfigError


@dataclass
class RunOptions:
    """`stability grid run`'s options that reach a backend."""

    jobs: int | None = None  # local: cells at once (default: cores / resources.cpus)
    tracking_uri: str | None = None
    runs_dir: str | Path = "runs"
    progress: bool = True
    slurm_params: list[str] = field(default_factory=list)  # KEY=VALUE for submitit


def _local(spec: GridSpec, o: RunOptions) -> GridRunner:
    from ablations.runner import LocalRunner

    if o.slurm_params:
        raise ConfigError("--slurm: only with --backend slurm or submitit-local")
    return LocalRunner(spec, jobs=o.jobs, tracking_uri=o.tracking_uri, runs_dir=o.runs_dir,
                       progress=o.progress)


def _submitit(local: bool) -> Callable[[GridSpec, RunOptions], GridRunner]:
    def build(spec: GridSpec, o: RunOptions) -> GridRunner:
        from ablations.slurm import SlurmRunner, parse_slurm_params

        if o.jobs is not None:
            raise ConfigError("--jobs: only with --backend local (Slurm runs every cell as one array)")
        return SlurmRunner(spec, tracking_uri=o.tracking_uri, runs_dir=o.runs_dir, local=local,
                           params=parse_slurm_params(o.slurm_params), progress=o.progress)

    return build


BACKENDS: dict[str, Callable[[GridSpec, RunOptions], GridRunner]] = {
    "local": _local,  # worker processes on this machine
    "slurm": _submitit(local=False),  # a submitit job array on Slurm
    "submitit-local": _submitit(local=True),  # the same path through submitit's local executor
}


def runner_for(backend: str, spec: GridSpec, options: RunOptions) -> GridRunner:
    """The runner of `backend` for `spec`; one-line `ConfigError` for an unknown name or option."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r} not in ({', '.join(BACKENDS)})")
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {options.jobs}")
    return BACKENDS[backend](spec, options)
