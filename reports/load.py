"""Load a grid (or a plain experiment) back from MLflow as the tidy frames of `reports.frames`.

Reads only what the tracker wrote (DESIGN.md section 2): runs, tags, params, metric histories and
the `dense/` and `spikes.csv` artifacts. No trainer objects, no checkpoint folders, so it works on a
store copied from another machine (a sqlite file with its `mlartifacts/` folder beside it: artifact
locations recorded as absolute paths on the other machine are re-rooted next to the database).

Which runs: the experiment named like the grid. When it holds a grid parent run (tag
`stability.role=grid`, or `grid=parent`, or a run without an `arm` tag that other runs name as their
`mlflow.parentRunId`), the runs are the children of the newest parent (or of `parent_run_id`);
otherwise every run of the experiment (single `stability train` runs).

Speed (`benchmarks/bench_load.py`): metric histories are read from the store's `metrics` table
when the tracking URI is a database, not through MLflow's API (~13 ms per key history). sqlite:
one indexed query per (run, key) on a read-only connection, rows handed over as two numbers, two
threads (turning rows into Python objects is most of the cost, and one query for everything
needs a sort or per-row key strings that cost more); other databases: one query per experiment
(per 500 runs) through SQLAlchemy. Other stores (a tracking server, a file store) fall back to
`MlflowClient.get_metric_history` per run and key on a thread pool. Points logged twice at the
same step (a resumed run) keep the last by timestamp; NaN points come back as NaN and the
+-1.797e308 a SQL store writes for +-inf as +-inf. Artifacts are read on a thread pool, straight
from the folder when the artifact location is local, else downloaded to a temporary folder.

Frames: `series` sorted by run (the order of `runs`: start time), metric, step; string columns
use pandas' default string dtype.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from reports import frames as F
from stability import metric_names as M
from stability.tracking_io import DENSE_ARTIFACT_DIR, _quiet_mlflow_logs, resolve_uri

PARENT_ROLE_TAG = "stability.role"  # = "grid" on a grid's parent run
PARENT_TAG = "mlflow.parentRunId"
_MLFLOW_STATUS = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running",
                  "KILLED": "failed", "SCHEDULED": "running"}
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SQL_MAX = 1.7976931348623157e308  # what the SQL store writes for +-inf
_IN_CHUNK = 500  # run ids per SQL query (well under every database's bound-parameter limit)
_THREADS = 8
_SQLITE_THREADS = 2
_PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3

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
    _quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(tracking_uri or "")
    db_path = _sqlite_path(uri)
    if db_path is not None and not db_path.is_file():
        raise FileNotFoundError(f"no MLflow database at {db_path} (tracking URI {uri})")
    client = MlflowClient(tracking_uri=uri)
    exp = _find_experiment(client, experiment_or_spec)
    all_runs = _search_runs(client, exp.experiment_id)
    parent, runs = _select_runs(all_runs, parent_run_id)

    run_ids = [r.info.run_id for r in runs]
    prefixes = None if series is None else (series,) if isinstance(series, str) else tuple(series)
    wanted = None if prefixes is None else (*prefixes, *_SUMMARY_KEYS, _ATTN_LAYER_PREFIX)
    fetch = _sql_points if _is_sql_uri(uri) else _api_points
    points = _dedupe(fetch(uri, client, runs, wanted))

    store_dir = db_path.parent if db_path is not None else _local_store_dir(uri)
    arts = _read_artifacts(client, runs, store_dir, dense)
    dense_frame = _concat([a[0] for a in arts], F.DENSE_COLUMNS, _empty_dense())
    spikes_frame = _concat([a[1] for a in arts], F.SPIKE_COLUMNS, _empty_spikes())
    n_spikes = {rid: (np.nan if a[1] is None else float(len(a[1]))) for rid, a in zip(run_ids, arts)}

    params = _params_frame(runs)
    runs_frame = _runs_frame(runs, points, dense_frame, n_spikes)
    return F.GridData(
        name=exp.name, runs=runs_frame, series=_series_frame(points, prefixes), dense=dense_frame,
        spikes=spikes_frame, params=params,
        baseline=(parent.data.tags.get("baseline") or None) if parent is not None else None,
        parent_run_id=parent.info.run_id if parent is not None else None)


# ------------------------------------------------------------------------------------- runs
def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _is_sql_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in _SQL_SCHEMES


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
    """The grid name of a spec file or bundled grid, None when `text` is neither."""
    from ablations.spec import load_spec
    from stability.config import ConfigError

    try:
        return load_spec(text).name
    except (ConfigError, OSError):
        return None


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
    return (tags.get(PARENT_ROLE_TAG) == "grid" or tags.get("grid") == "parent"
            or ("arm" not in tags and run.info.run_id in referenced))


def _select_runs(all_runs: list, parent_run_id: str | None) -> tuple[Any, list]:
    """(the grid parent or None, the runs that make the grid), runs by start time."""
    referenced = {r.data.tags[PARENT_TAG] for r in all_runs if PARENT_TAG in r.data.tags}
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
    return parent, [r for r in all_runs if r.data.tags.get(PARENT_TAG) == pid]


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


# ------------------------------------------------------------------------------------- metrics
class _Points:
    """Metric points of many runs as parallel arrays; `run` and `key` are codes into the lists."""

    def __init__(self, run_ids: list[str], keys: list[str], run: np.ndarray, key: np.ndarray,
                 step: np.ndarray, timestamp: np.ndarray, value: np.ndarray, deduped: bool = False
                 ) -> None:
        self.run_ids, self.keys = run_ids, keys
        self.run, self.key, self.step, self.timestamp, self.value = run, key, step, timestamp, value
        self.deduped = deduped  # sorted by (run, key, step) with one point per step

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def take(self, idx: np.ndarray) -> _Points:
        return _Points(self.run_ids, self.keys, self.run[idx], self.key[idx], self.step[idx],
                       self.timestamp[idx], self.value[idx], self.deduped)


def _from_columns(run_order: list[str], run_col: Iterable, key_col: Iterable, step: np.ndarray,
                  timestamp: np.ndarray, value: np.ndarray, is_nan: np.ndarray | None) -> _Points:
    """Points from row columns; run codes index `run_order`, key codes the sorted keys."""
    run_codes = pd.Categorical(np.asarray(run_col, dtype=object), categories=run_order).codes
    key_codes, keys = pd.factorize(np.asarray(key_col, dtype=object), sort=True)
    value = np.asarray(value, dtype=np.float64)
    if is_nan is not None and is_nan.any():
        value = np.where(is_nan, np.nan, value)
    value = np.where(value >= _SQL_MAX, np.inf, np.where(value <= -_SQL_MAX, -np.inf, value))
    return _Points(list(run_order), list(keys), run_codes.astype(np.int64), key_codes.astype(np.int64),
                   np.asarray(step, dtype=np.int64), np.asarray(timestamp, dtype=np.int64), value)


def _empty_points() -> _Points:
    z = np.zeros(0, dtype=np.int64)
    return _Points([], [], z, z, z, z, np.zeros(0))


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _sql_points(uri: str, client, runs: list, wanted: tuple[str, ...] | None) -> _Points:
    """All points of `runs` (keys starting with one of `wanted`) from the `metrics` table."""
    db = _sqlite_path(uri)
    if db is not None:
        import sqlite3

        try:
            return _sqlite_points(db, runs, wanted)
        except sqlite3.Error as exc:  # e.g. a hot journal a read-only connection cannot roll back
            warnings.warn(f"fast sqlite read failed ({exc}); reading through SQLAlchemy", stacklevel=3)
    return _sqlalchemy_points(uri, runs, wanted)


_BY_KEY = ("SELECT step * 2 + is_nan, value FROM metrics {hint} WHERE run_uuid = ? AND key = ?")
_BY_KEY_TS = ("SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ? AND key = ? "
              "ORDER BY step, timestamp")
_SQLITE_HINT = "INDEXED BY index_metrics_run_uuid_key_step"


def _sqlite_points(db: Path, runs: list, wanted: tuple[str, ...] | None) -> _Points:
    """The sqlite fast path: one indexed query per (run, key), keys from the run's latest metrics.

    Rows reach Python as two numbers (step * 2 + is_nan, value), the least the sqlite3 module can
    hand over (converting rows to Python objects is most of the cost); a (run, key) whose steps
    repeat is read again with timestamps to keep the last. Runs are read on two threads (sqlite
    releases the GIL while it reads, so one thread converts while the other reads).
    """
    import sqlite3

    jobs = [[k for k in sorted(r.data.metrics) if wanted is None or k.startswith(wanted)] for r in runs]
    keys = sorted({k for job in jobs for k in job})
    if not keys:
        return _empty_points()
    key_code = {k: i for i, k in enumerate(keys)}
    local = threading.local()
    connections: list = []
    pair = np.dtype([("code", np.int64), ("value", np.float64)])

    def connect() -> tuple[Any, str]:
        if getattr(local, "conn", None) is None:
            local.conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            connections.append(local.conn)
            local.sql = _BY_KEY.format(hint=_SQLITE_HINT)
            try:
                local.conn.execute(local.sql, ("", "")).fetchall()
            except sqlite3.OperationalError:  # an older schema without that index
                local.sql = _BY_KEY.format(hint="")
        return local.conn, local.sql

    def read(i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        conn, sql = connect()
        rid, out = runs[i].info.run_id, []
        for key in jobs[i]:
            rows = np.array(conn.execute(sql, (rid, key)).fetchall(), dtype=pair)
            step, value = rows["code"] >> 1, rows["value"]
            if (rows["code"] & 1).any():
                value = np.where(rows["code"] & 1, np.nan, value)
            if (np.diff(step) < 0).any():  # the index hands rows over by step; just in case
                order = np.argsort(step, kind="stable")
                step, value = step[order], value[order]
            if (np.diff(step) == 0).any():  # a step logged twice (a resumed run): last by timestamp
                full = conn.execute(_BY_KEY_TS, (rid, key)).fetchall()
                step = np.array([r[0] for r in full], dtype=np.int64)
                value = np.array([np.nan if r[3] else r[2] for r in full], dtype=np.float64)
                last = np.append(step[1:] != step[:-1], True)
                step, value = step[last], value[last]
            out.append((step, value))
        return out

    try:
        with ThreadPoolExecutor(max_workers=_SQLITE_THREADS) as pool:
            parts = [p for run_parts in pool.map(read, range(len(runs))) for p in run_parts]
    finally:
        for conn in connections:
            conn.close()
    sizes = np.array([p[0].size for p in parts], dtype=np.int64)
    value = np.concatenate([p[1] for p in parts])
    value = np.where(value >= _SQL_MAX, np.inf, np.where(value <= -_SQL_MAX, -np.inf, value))
    run_codes = np.array([i for i, job in enumerate(jobs) for _ in job], dtype=np.int64)
    key_codes = np.array([key_code[k] for job in jobs for k in job], dtype=np.int64)
    return _Points([r.info.run_id for r in runs], keys, np.repeat(run_codes, sizes),
                   np.repeat(key_codes, sizes), np.concatenate([p[0] for p in parts]),
                   np.zeros(int(sizes.sum()), dtype=np.int64), value, deduped=True)


def _sqlalchemy_points(uri: str, runs: list, wanted: tuple[str, ...] | None) -> _Points:
    """Other SQL stores: one query per experiment (per chunk of `_IN_CHUNK` runs)."""
    run_ids = [r.info.run_id for r in runs]
    if not run_ids or (wanted is not None and not wanted):
        return _empty_points()
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    cols: list[list] = [[] for _ in range(6)]
    try:
        with engine.connect() as conn:
            for i in range(0, len(run_ids), _IN_CHUNK):
                ids = run_ids[i:i + _IN_CHUNK]
                binds: dict[str, Any] = {f"r{j}": rid for j, rid in enumerate(ids)}
                where = f"run_uuid IN ({', '.join(f':r{j}' for j in range(len(ids)))})"
                if wanted is not None:
                    binds.update({f"k{j}": _like(p) for j, p in enumerate(wanted)})
                    where += " AND (" + " OR ".join(f"key LIKE :k{j} ESCAPE '\\'"
                                                    for j in range(len(wanted))) + ")"
                sql = sa.text(f"SELECT run_uuid, key, step, timestamp, value, is_nan FROM metrics "
                              f"WHERE {where}")
                rows = conn.execute(sql, binds).fetchall()
                if rows:
                    for c, col in zip(cols, zip(*rows)):
                        c.extend(col)
    finally:
        engine.dispose()
    if not cols[0]:
        return _empty_points()
    points = _from_columns(run_ids, cols[0], cols[1], np.fromiter(cols[2], np.int64, len(cols[2])),
                           np.fromiter(cols[3], np.int64, len(cols[3])),
                           np.fromiter(cols[4], np.float64, len(cols[4])),
                           np.fromiter(cols[5], bool, len(cols[5])))
    if wanted is not None:  # LIKE may be case-insensitive: keep exact prefix matches only
        keep = np.array([k.startswith(wanted) for k in points.keys], dtype=bool)
        if not keep.all():
            points = points.take(np.flatnonzero(keep[points.key]))
    return points


def _api_points(uri: str, client, runs: list, wanted: tuple[str, ...] | None) -> _Points:
    """The same through `MlflowClient.get_metric_history`, (run, key) pairs on a thread pool."""
    jobs = [(r.info.run_id, k) for r in runs for k in sorted(r.data.metrics)
            if wanted is None or k.startswith(wanted)]
    if not jobs:
        return _empty_points()
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        histories = list(pool.map(lambda job: client.get_metric_history(*job), jobs))
    run_col, key_col, step, ts, value = [], [], [], [], []
    for (rid, key), hist in zip(jobs, histories):
        run_col.extend([rid] * len(hist))
        key_col.extend([key] * len(hist))
        step.extend(m.step for m in hist)
        ts.extend(m.timestamp for m in hist)
        value.extend(m.value for m in hist)
    return _from_columns([r.info.run_id for r in runs], run_col, key_col, np.asarray(step, np.int64),
                         np.asarray(ts, np.int64), np.asarray(value, np.float64), None)


def _dedupe(points: _Points) -> _Points:
    """Sorted by (run, key, step); of points at the same (run, key, step) the last by timestamp."""
    if points.deduped or not len(points):
        return points
    order = np.lexsort((points.timestamp, points.step, points.key, points.run))
    p = points.take(order)
    last = np.ones(len(p), dtype=bool)
    last[:-1] = (p.run[1:] != p.run[:-1]) | (p.key[1:] != p.key[:-1]) | (p.step[1:] != p.step[:-1])
    p = p if last.all() else p.take(np.flatnonzero(last))
    p.deduped = True
    return p


def _strings(names: list[str], codes: np.ndarray):
    """`names[codes]` as pandas' default string column, decoded by Arrow on pandas >= 3 (where the
    default string dtype is Arrow-backed; building it from Python objects is 30x slower)."""
    if _PANDAS_3:
        import pyarrow as pa

        decoded = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                                 pa.array(names, pa.large_string())).dictionary_decode()
        return pd.array(decoded, dtype="str")
    return np.asarray(names, dtype=object)[codes]


def _series_frame(points: _Points, prefixes: tuple[str, ...] | None) -> pd.DataFrame:
    if prefixes is not None and len(points):
        keep = np.array([k.startswith(prefixes) for k in points.keys], dtype=bool)
        points = points.take(np.flatnonzero(keep[points.key]))
    if not len(points):
        return pd.DataFrame({F.RUN_ID: pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype=object), "value": pd.Series(dtype="float64")})
    return pd.DataFrame({F.RUN_ID: _strings(points.run_ids, points.run), "step": points.step,
                         "metric": _strings(points.keys, points.key), "value": points.value},
                        columns=list(F.SERIES_COLUMNS))


# ------------------------------------------------------------------------------------- artifacts
def _empty_dense() -> pd.DataFrame:
    return pd.DataFrame({F.RUN_ID: pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                         "key": pd.Series(dtype=object), "layer": pd.Series(dtype="int32"),
                         "head": pd.Series(dtype="int32"), "value": pd.Series(dtype="float32")})


def _empty_spikes() -> pd.DataFrame:
    from stability.spikes import events_to_frame

    frame = events_to_frame([])
    frame.insert(0, F.RUN_ID, pd.Series(dtype=object))
    return frame


def _concat(frames: list[pd.DataFrame | None], columns: tuple[str, ...], empty: pd.DataFrame
            ) -> pd.DataFrame:
    parts = [f for f in frames if f is not None and len(f)]
    if not parts:
        return empty
    return pd.concat(parts, ignore_index=True)[list(columns)]


def _local_artifact_dir(artifact_uri: str, run_id: str, store_dir: Path | None
                        ) -> tuple[Path | None, Path | None]:
    """(the run's artifact folder when it is on this file system, else None; the artifact root it
    sits in when that root was not found here, else None).

    A recorded absolute path that does not exist here (a store copied from another machine) is
    re-rooted beside the store: `<store dir>/<the longest tail of the recorded root that exists
    there>/<run id>/artifacts`, e.g. `<db dir>/mlartifacts/<run id>/artifacts`. A run that never
    logged an artifact has no folder even in a complete store, so only a missing root is reported.
    """
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        path = Path(url2pathname(unquote(parsed.path)))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(artifact_uri)
    else:
        return None, None
    parts = path.parts
    if path.exists() or run_id not in parts:
        return path, None
    i = len(parts) - 1 - parts[::-1].index(run_id)
    root, tail = Path(*parts[:i]), Path(*parts[i:])
    if root.is_dir():
        return path, None  # the root is here: this run just has no artifacts
    if store_dir is not None:
        for base in (store_dir, store_dir.parent):
            for k in range(1, i + 1):  # longest tail of the root first
                candidate = base.joinpath(*parts[k:i])
                if candidate.is_dir() and (k < i or (candidate / tail).exists()):
                    return candidate / tail, None
    return path, root


def _read_spikes(path: Path, run_id: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    empty = _empty_spikes()
    try:
        raw = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return empty
    raw.insert(0, F.RUN_ID, run_id)
    for col in empty.columns:
        if col not in raw.columns:
            raw[col] = pd.NA
    out = raw[list(empty.columns)]
    dtypes = {c: str(t) for c, t in empty.dtypes.items() if c != F.RUN_ID}
    for col, dtype in dtypes.items():
        if dtype == "boolean":
            out[col] = out[col].map(_bool_or_na).astype("boolean")
        elif dtype in ("Int64", "int64", "float64"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(dtype)
        else:
            out[col] = out[col].astype(object)
    return out


def _bool_or_na(v: Any) -> Any:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return pd.NA


def _read_run_artifacts(client, run, store_dir: Path | None, dense: bool
                        ) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(dense rows with run_id, spikes.csv rows with run_id or None when there is no spikes.csv)."""
    from stability.dense import read_dense

    rid = run.info.run_id
    local, _ = _local_artifact_dir(run.info.artifact_uri or "", rid, store_dir)
    with tempfile.TemporaryDirectory(prefix="load-grid-") as tmp:
        if local is not None:
            root = local
        else:  # a remote artifact store: download what is there
            root = Path(tmp)
            names = {a.path for a in client.list_artifacts(rid)}
            for name in ((DENSE_ARTIFACT_DIR,) if dense else ()) + (M.SPIKES_ARTIFACT,):
                if name in names:
                    client.download_artifacts(rid, name, str(root))
        dense_rows = None
        if dense:
            d = read_dense(root / DENSE_ARTIFACT_DIR)
            if len(d):
                d.insert(0, F.RUN_ID, rid)
                dense_rows = d
        return dense_rows, _read_spikes(root / M.SPIKES_ARTIFACT, rid)


def _read_artifacts(client, runs: list, store_dir: Path | None, dense: bool) -> list[tuple]:
    if not runs:
        return []
    # trainer runs (tag `recipe`) always upload config.toml: their artifact root must be there
    missing = sorted({str(root) for r in runs if "recipe" in r.data.tags
                      and (root := _local_artifact_dir(r.info.artifact_uri or "", r.info.run_id,
                                                       store_dir)[1]) is not None})
    if missing:
        warnings.warn(f"artifact folder(s) {', '.join(missing)} not found, nor beside the store "
                      f"{store_dir}: no dense rows or spike events for the runs there (copy the "
                      "artifact folder along with the database)", stacklevel=3)
    with ThreadPoolExecutor(max_workers=min(_THREADS, len(runs))) as pool:
        return list(pool.map(lambda r: _read_run_artifacts(client, r, store_dir, dense), runs))


# ------------------------------------------------------------------------------------- summaries
def _per_run(points: _Points, key: str, how: str) -> dict[int, float]:
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


def _last_values(points: _Points, key: str) -> dict[int, float]:
    """The value at the largest step, NaN included (pandas' last() would skip a NaN)."""
    if key not in points.keys:
        return {}
    idx = np.flatnonzero(points.key == points.keys.index(key))
    if not idx.size:
        return {}
    run = points.run[idx]
    ends = np.flatnonzero(np.append(run[1:] != run[:-1], True))
    return dict(zip(run[ends].tolist(), points.value[idx][ends].tolist()))


def _runs_frame(runs: list, points: _Points, dense: pd.DataFrame, n_spikes: dict[str, float]
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
        status = tags.get("status") or _MLFLOW_STATUS.get(r.info.status, "running")
        diverged = _number(tags.get("diverged_at_step")) if status == "diverged" else np.nan
        records.append({
            F.RUN_ID: rid, F.RUN_NAME: r.info.run_name, F.ARM: tags.get("arm") or r.info.run_name,
            F.SEED: _number(tags.get("seed"), p.get("train.seed")),
            F.LR: _number(tags.get("lr"), p.get("optim.lr")),
            F.CELL: tags.get("cell"), F.RECIPE: tags.get("recipe"), F.STATUS: status,
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
