"""Load a grid (or a plain experiment) back from MLflow as the tidy frames of `reports.frames`.

Reads only what the tracker wrote (docs/architecture.md): runs, tags, params, metric histories
(`reports.load_metrics`) and the `dense/` and `spikes.csv` artifacts (`reports.load_artifacts`).
No trainer objects, no checkpoint folders, so it works on a store copied from another machine (a
sqlite file with its `mlartifacts/` folder beside it).

Which runs: the experiment named like the grid. When it holds a grid parent run (tag
`stability.role=grid`, or `grid=parent`, or a run without an `arm` tag that other runs name as their
`mlflow.parentRunId`), the runs are the children of the newest parent (or of `parent_run_id`);
otherwise every run of the experiment (single `stability train` runs).

Frames: `series` sorted by run (the order of `runs`: start time), metric, step; string columns
use pandas' default string dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from reports import frames as F
from reports.load_artifacts import concat_frames, empty_dense, empty_spikes, read_artifacts
from reports.load_metrics import Points, api_points, dedupe, is_sql_uri, series_frame, sql_points, sqlite_path
from stability import metric_names as M
from stability import store
from stability.store import GRID_ROLE, Tag

# Metric keys the run summaries need, whatever `series=` selects.
_SUMMARY_KEYS = (M.TRAIN_LOSS, M.EVAL_LOSS, M.GRAD_NORM, M.LOGITS_LOG_Z_MEAN, M.SPIKE_SCORE_LOSS,
                 M.SPIKE_SCORE_GRAD_NORM, M.INIT_GROWTH_ACT, M.INIT_GROWTH_GRAD)
_ATTN_LAYER_PREFIX = M.ATTN_LOGIT_MAX + "/layer_"


# ------------------------------------------------------------------------------------- public
def load_grid(experiment_or_spec: str, tracking_uri: str | None = None, *,
              parent_run_id: str | None = None, dense: bool = True,
              series: Sequence[str] | None = None) -> F.GridData:
    """Everything about one grid (or plain experiment) as a `GridData`.

    `experiment_or_spec`: an MLflow experiment name, or a grid spec (a TOML path or a bundled grid
    name) whose `name` is the experiment. `tracking_uri`: explicit, else `$MLFLOW_TRACKING_URI`,
    else `sqlite:///mlflow.db`. `parent_run_id` picks one grid parent when the experiment holds
    several (default: the newest). `dense=False` skips the dense artifact (the `dense` frame stays
    empty, `max_attn_logit` then comes from the MLflow keys). `series`: metric-key prefixes to keep
    in the `series` frame (None: all keys; the run summaries are computed either way).
    Raises `FileNotFoundError` for a sqlite file that does not exist and `LookupError` for an
    unknown experiment or parent run.
    """
    uri = store.resolve_uri(tracking_uri or "")
    db_path = sqlite_path(uri)
    if db_path is not None and not db_path.is_file():
        raise FileNotFoundError(f"no MLflow database at {db_path} (tracking URI {uri})")
    client = store.client(uri)
    exp = _find_experiment(client, experiment_or_spec)
    all_runs = _search_runs(client, exp.experiment_id)
    parent, runs = _select_runs(all_runs, parent_run_id)

    run_ids = [r.info.run_id for r in runs]
    prefixes = None if series is None else (series,) if isinstance(series, str) else tuple(series)
    wanted = None if prefixes is None else (*prefixes, *_SUMMARY_KEYS, _ATTN_LAYER_PREFIX)
    fetch = sql_points if is_sql_uri(uri) else api_points
    points = dedupe(fetch(uri, client, runs, wanted))

    store_dir = db_path.parent if db_path is not None else _local_store_dir(uri)
    arts = read_artifacts(client, runs, store_dir, dense)
    dense_frame = concat_frames([a[0] for a in arts], F.DENSE_COLUMNS, empty_dense())
    spikes_frame = concat_frames([a[1] for a in arts], F.SPIKE_COLUMNS, empty_spikes())
    n_spikes = {rid: (np.nan if a[1] is None else float(len(a[1]))) for rid, a in zip(run_ids, arts)}

    params = _params_frame(runs)
    runs_frame = _runs_frame(runs, points, dense_frame, n_spikes)
    return F.GridData(
        name=exp.name, runs=runs_frame, series=series_frame(points, prefixes), dense=dense_frame,
        spikes=spikes_frame, params=params,
        baseline=(parent.data.tags.get(Tag.BASELINE) or None) if parent is not None else None,
        parent_run_id=parent.info.run_id if parent is not None else None)


# ------------------------------------------------------------------------------------- runs
def _local_store_dir(uri: str) -> Path | None:
    """A file store's root (a plain path or a file: URI), else None."""
    if "://" in uri and not uri.startswith("file:"):
        return None
    path = Path(url2pathname(unquote(urlparse(uri).path))) if uri.startswith("file:") else Path(uri)
    return path.resolve()


def _find_experiment(client, experiment_or_spec: str):
    """The experiment named `experiment_or_spec`, else the one named by the spec it points to."""
    name = str(experiment_or_spec)
    is_spec_file = name.endswith(".toml") or Path(name).is_file()
    exp = None if is_spec_file else client.get_experiment_by_name(name)
    if exp is None:
        spec_name = _spec_name(name)
        if spec_name is not None:
            exp = client.get_experiment_by_name(spec_name)
            name = spec_name
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"no experiment {name!r} in the tracking store (experiments: "
                          f"{', '.join(known) or 'none'})")
    return exp


def _spec_name(text: str) -> str | None:
    """The grid (= experiment) name a spec file declares, None when `text` is not a readable one.

    A bundled grid's name is already its experiment's: only files need reading, and reading
    their `name` key needs nothing of the grid runner.
    """
    import tomllib

    path = Path(text)
    if not path.is_file():
        return None
    try:
        name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return None
    return name if isinstance(name, str) else None


def _search_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=10000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _is_parent(run, referenced: set[str]) -> bool:
    tags = run.data.tags
    return (tags.get(Tag.ROLE) == GRID_ROLE or tags.get(Tag.GRID) == "parent"
            or (Tag.ARM not in tags and run.info.run_id in referenced))


def _select_runs(all_runs: list, parent_run_id: str | None) -> tuple[Any, list]:
    """(the grid parent or None, the runs that make the grid), runs by start time."""
    referenced = {r.data.tags[Tag.PARENT_RUN_ID] for r in all_runs if Tag.PARENT_RUN_ID in r.data.tags}
    parents = [r for r in all_runs if _is_parent(r, referenced)]
    if parent_run_id is not None:
        chosen = [r for r in all_runs if r.info.run_id == parent_run_id]
        if not chosen:
            raise LookupError(f"parent run {parent_run_id!r} is not in this experiment")
        parent = chosen[0]
    elif parents:
        parent = max(parents, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    else:
        return None, list(all_runs)
    pid = parent.info.run_id
    return parent, [r for r in all_runs if r.data.tags.get(Tag.PARENT_RUN_ID) == pid]


def _parse_value(text: Any) -> Any:
    """A param string back to int / float / bool / None where it parses, else the string."""
    if not isinstance(text, str):
        return text
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if text in ("None", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _params_frame(runs: list) -> pd.DataFrame:
    rows = {r.info.run_id: {k: _parse_value(v) for k, v in r.data.params.items()} for r in runs}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame = frame.reindex(columns=sorted(frame.columns))
    frame.index.name = F.RUN_ID
    return frame


def _number(*texts: Any) -> float:
    for t in texts:
        try:
            v = float(t)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            return v
    return np.nan


# ------------------------------------------------------------------------------------- summaries
def _per_run(points: Points, key: str, how: str) -> dict[int, float]:
    """{run code: min / max / first finite value of `key`} (NaN points ignored)."""
    if key not in points.keys:
        return {}
    idx = np.flatnonzero(points.key == points.keys.index(key))
    values = points.value[idx]
    keep = np.isfinite(values) if how == "first_finite" else ~np.isnan(values)
    s = pd.Series(values[keep], index=points.run[idx][keep])
    if not len(s):
        return {}
    g = s.groupby(level=0, sort=False)
    return (g.first() if how == "first_finite" else getattr(g, how)()).to_dict()


def _last_values(points: Points, key: str) -> dict[int, float]:
    """The value at the largest step, NaN included (pandas' last() would skip a NaN)."""
    if key not in points.keys:
        return {}
    idx = np.flatnonzero(points.key == points.keys.index(key))
    if not idx.size:
        return {}
    run = points.run[idx]
    ends = np.flatnonzero(np.append(run[1:] != run[:-1], True))
    return dict(zip(run[ends].tolist(), points.value[idx][ends].tolist()))


def _runs_frame(runs: list, points: Points, dense: pd.DataFrame, n_spikes: dict[str, float]
                ) -> pd.DataFrame:
    code_of = {rid: i for i, rid in enumerate(points.run_ids)}

    def col(values: dict[int, float]) -> list[float]:
        return [values.get(code_of.get(r.info.run_id, -1), np.nan) for r in runs]

    last_step: dict[int, int] = {}
    if M.TRAIN_LOSS in points.keys:
        idx = np.flatnonzero(points.key == points.keys.index(M.TRAIN_LOSS))
        run = points.run[idx]
        ends = np.flatnonzero(np.append(run[1:] != run[:-1], True))
        last_step = dict(zip(run[ends].tolist(), points.step[idx][ends].tolist()))

    attn: dict[str, float] = {}
    if len(dense):
        rows = dense[dense["key"] == M.ATTN_LOGIT_MAX]
        if len(rows):
            attn = rows.groupby(F.RUN_ID)["value"].max().astype("float64").to_dict()
    attn_codes = [i for i, k in enumerate(points.keys) if k.startswith(_ATTN_LAYER_PREFIX)]
    mlflow_attn: dict[int, float] = {}
    if attn_codes:
        idx = np.flatnonzero(np.isin(points.key, attn_codes))
        mlflow_attn = (pd.Series(points.value[idx]).groupby(points.run[idx]).max().to_dict())

    records = []
    for r in runs:
        rid, tags, p = r.info.run_id, r.data.tags, r.data.params
        status = store.status_of(tags, r.info.status)
        diverged = _number(tags.get(Tag.DIVERGED_AT_STEP)) if status == store.DIVERGED else np.nan
        records.append({
            F.RUN_ID: rid, F.RUN_NAME: r.info.run_name, F.ARM: tags.get(Tag.ARM) or r.info.run_name,
            F.SEED: _number(tags.get(Tag.SEED), p.get("train.seed")),
            F.LR: _number(tags.get(Tag.LR), p.get("optim.lr")),
            F.CELL: tags.get(Tag.CELL), F.RECIPE: tags.get(Tag.RECIPE), F.STATUS: status,
            F.DIVERGED_AT_STEP: diverged,
            F.LAST_STEP: last_step.get(code_of.get(rid, -1), np.nan),
            F.MAX_ATTN_LOGIT: attn.get(rid, mlflow_attn.get(code_of.get(rid, -1), np.nan)),
            F.N_SPIKES: n_spikes.get(rid, np.nan),
            F.D_MODEL: _number(p.get("model.d_model")),
            F.INIT: p.get("model.init"),
        })
    frame = pd.DataFrame(records, columns=list(F.RUN_COLUMNS))
    for column, key, how in ((F.FINAL_EVAL_LOSS, M.EVAL_LOSS, "last"),
                             (F.BEST_EVAL_LOSS, M.EVAL_LOSS, "min"),
                             (F.FINAL_TRAIN_LOSS, M.TRAIN_LOSS, "last"),
                             (F.LOSS_AT_INIT, M.TRAIN_LOSS, "first_finite"),
                             (F.MAX_GRAD_NORM, M.GRAD_NORM, "max"),
                             (F.FINAL_LOG_Z, M.LOGITS_LOG_Z_MEAN, "last"),
                             (F.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_LOSS, "last"),
                             (F.SPIKE_SCORE_GRAD_NORM, M.SPIKE_SCORE_GRAD_NORM, "last"),
                             (F.GROWTH_ACT, M.INIT_GROWTH_ACT, "last"),
                             (F.GROWTH_GRAD, M.INIT_GROWTH_GRAD, "last")):
        values = _last_values(points, key) if how == "last" else _per_run(points, key, how)
        frame[column] = col(values)
    return F.typed_runs(frame)
