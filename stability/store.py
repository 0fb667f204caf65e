"""The one public door to the MLflow store: the URI rule, the run-tag schema, statuses and their
MLflow status, a client with retries, experiments, and marking a run's end.

The trainer (`stability.tracking`), the grid (`ablations`) and `reports` all read and write runs
through these names, so a tag is spelled in one place and a status means the same everywhere.
Importing this module imports neither MLflow nor torch (the client is created on demand).

Run tags (see docs/architecture.md, "The store"):

    status            running | finished | diverged | failed | interrupted   (the source of truth)
    arm, seed, lr     a grid cell's arm, seed and learning rate (single runs: `arm` when given)
    cell              content hash of the resolved config: two runs with one cell are the same run
    recipe            olmo2 | olmo0424 when every recipe knob matches, else custom
    base_recipe       the recipe with the fewest deviating knobs
    deviations        those knobs as `key=value`, comma-separated ("" when none)
    preset, n_params, device, ranks, attention, data_fingerprint, git_commit
    diverged_at_step, interrupted_at_step, stop_signal, resumed_at_step
    stability.role    grid, on a grid's parent run; its children carry mlflow.parentRunId
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_URI = "sqlite:///mlflow.db"

# ---------------------------------------------------------------------------- statuses
RUNNING, FINISHED, DIVERGED, FAILED, INTERRUPTED = (
    "running", "finished", "diverged", "failed", "interrupted")
STATUSES = (RUNNING, FINISHED, DIVERGED, FAILED, INTERRUPTED)
RESULTS = (FINISHED, DIVERGED)  # a run that ended with a result: never rerun
# `status` -> MLflow's run status. `interrupted` (stopped by a signal, checkpointed, resumable) is
# KILLED: ended from outside, neither completed (FINISHED) nor crashed (FAILED).
MLFLOW_STATUS = {RUNNING: "RUNNING", FINISHED: "FINISHED", DIVERGED: "FINISHED", FAILED: "FAILED",
                 INTERRUPTED: "KILLED"}


def status_from_mlflow(mlflow_status: str) -> str:
    """Our status for a run without a `status` tag, from its MLflow status."""
    return {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": INTERRUPTED}.get(mlflow_status, RUNNING)


def status_of(tags: dict[str, str], mlflow_status: str) -> str:
    """A run's status: its `status` tag, else what its MLflow status means."""
    return tags.get(Tag.STATUS) or status_from_mlflow(mlflow_status)


# ---------------------------------------------------------------------------- tags
class Tag:
    """Run-tag names (module docstring)."""

    STATUS = "status"
    ARM = "arm"
    SEED = "seed"
    LR = "lr"
    CELL = "cell"
    RECIPE = "recipe"
    BASE_RECIPE = "base_recipe"
    DEVIATIONS = "deviations"
    PRESET = "preset"
    N_PARAMS = "n_params"
    DEVICE = "device"
    RANKS = "ranks"
    ATTENTION = "attention"
    DATA_FINGERPRINT = "data_fingerprint"
    GIT_COMMIT = "git_commit"
    DIVERGED_AT_STEP = "diverged_at_step"
    INTERRUPTED_AT_STEP = "interrupted_at_step"
    STOP_SIGNAL = "stop_signal"
    RESUMED_AT_STEP = "resumed_at_step"
    REWINDS = "rewinds"  # train.on_spike = "rewind": how many, at the end
    PARENT_RUN_ID = "mlflow.parentRunId"
    ROLE = "stability.role"
    # on a grid's parent run
    GRID = "grid"
    BASELINE = "baseline"
    N_CELLS = "n_cells"


GRID_ROLE = "grid"  # the value of Tag.ROLE on a grid's parent run
# MLflow 3's UI opens an experiment by its kind, else on the GenAI overview (traces, "No data").
# The experiment tag says "model training"; MLflow 3.17's UI reads the kind from its global
# workflow switch instead, which a link sets with `?workflowType=machine_learning` (`ui_url`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
UI_MODEL_TRAINING = "workflowType=machine_learning"


def param_value(value: Any) -> str:
    """A config value as an MLflow param: None as "None" (not TOML's "null"), cut to 6000."""
    return str(value)[:6000]


# ---------------------------------------------------------------------------- the URI rule
def resolve_uri(uri: str = "") -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def absolute_uri(uri: str) -> str:
    """`sqlite:///relative.db` -> `sqlite:////abs/relative.db` (workers may run elsewhere)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def safe_uri(uri: str) -> str | None:
    """`uri` when it carries no credentials (no `user@`), else None: safe to print and store."""
    return None if "@" in uri else uri


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a person looks: the MLflow UI page of the experiment (or run), on its runs view.

    A local store has no server: the UI is `mlflow ui --backend-store-uri URI` on its default
    address."""
    base = uri.rstrip("/") if is_http(uri) else "http://127.0.0.1:5000"
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_MODEL_TRAINING}"


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """`ui_url`, preceded for a local store by the command that serves it."""
    url = ui_url(uri, experiment_id, run_id)
    return url if is_http(uri) else f"mlflow ui --backend-store-uri {uri}, then {url}"


def artifact_root_for(uri: str) -> str | None:
    """For a local sqlite store: `mlartifacts/` beside the database file; else the server's choice."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


# ---------------------------------------------------------------------------- the client
class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer when a run had to be created or opened."""


def quiet_mlflow_logs() -> None:
    """Silence MLflow's and its HTTP stack's chatter (our own messages report outages)."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("mlflow.utils.rest_utils", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)


T = TypeVar("T")


def retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call `fn`, retrying transient store errors with exponential backoff; the last re-raised."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any store error is retried
            if attempt == attempts - 1:
                raise
            print(f"warning: tracking write failed ({type(exc).__name__}: {exc}); retrying",
                  file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


START_WAIT_S = 5.0  # how long opening a run waits for an HTTP server that does not answer


def check_reachable(uri: str, wait_s: float | None = None) -> None:
    """Raise `TrackingUnavailable` when an HTTP tracking server gives no answer at all in `wait_s`.

    Any HTTP response (even an error page) counts as reachable; only connection failures and
    timeouts do not. Without this, MLflow's client retries a dead server for minutes.
    """
    if not is_http(uri):
        return
    import requests

    wait_s = START_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=max(0.5, min(3.0, wait_s)))
            return
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(
                    f"tracking server {uri} is not reachable ({type(exc).__name__}); a run can only "
                    "start with the server up (start it, or use --tracking-uri sqlite:///mlflow.db)"
                ) from exc
            time.sleep(0.5)


def client(uri: str = "") -> Any:
    """An `MlflowClient` for the store at `uri` (resolved by the URI rule), logs quieted."""
    quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(uri))


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (artifacts beside a sqlite store; kind
    "model training", so MLflow's UI opens it on its runs). Safe when another process creates it
    at the same moment."""
    exp = retry(mlflow_client.get_experiment_by_name, name)
    if exp is None:
        try:
            exp_id = mlflow_client.create_experiment(
                name, artifact_location=artifact_root_for(uri),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
            return exp_id
        except Exception:  # noqa: BLE001 - another process created it first
            exp = retry(mlflow_client.get_experiment_by_name, name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older version or by hand
        retry(mlflow_client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG,
              MODEL_TRAINING_KIND)
    return exp.experiment_id


def end_run(mlflow_client: Any, run_id: str, status: str, tags: dict[str, Any] | None = None,
            attempts: int = 8) -> None:
    """Set the `status` tag (and `tags`), then end the run with the matching MLflow status."""
    for key, value in {**(tags or {}), Tag.STATUS: status}.items():
        if value is not None:
            retry(mlflow_client.set_tag, run_id, key, str(value), attempts=attempts)
    retry(mlflow_client.set_terminated, run_id, MLFLOW_STATUS[status], attempts=attempts)


def mark_failed(mlflow_client: Any, run_id: str, traceback_text: str, attempts: int = 8) -> None:
    """A crashed run: its traceback as `traceback.txt`, status failed (MLflow FAILED)."""
    retry(mlflow_client.log_text, run_id, traceback_text, "traceback.txt", attempts=attempts)
    end_run(mlflow_client, run_id, FAILED, attempts=attempts)
