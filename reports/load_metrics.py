"""Metric histories of many runs, read from an MLflow store as flat arrays (`Points`) for `reports.load`.

Speed (`benchmarks/bench_load.py`): histories are read from the store's `metrics` table when the
tracking URI is a database, not through MLflow's API (~13 ms per key history). sqlite: one indexed
query per (run, key) on a read-only connection, rows handed over as two numbers, two threads
(turning rows into Python objects is most of the cost, and one query for everything needs a sort
or per-row key strings that cost more); other databases: one query per experiment (per 500 runs)
through SQLAlchemy. Other stores (a tracking server, a file store) fall back to
`MlflowClient.get_metric_history` per run and key on a thread pool. Points logged twice at the
same step (a resumed run) keep the last by timestamp; NaN points come back as NaN and the
+-1.797e308 a SQL store writes for +-inf as +-inf.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import frames as F

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SQL_MAX = 1.7976931348623157e308  # what the SQL store writes for +-inf
_IN_CHUNK = 500  # run ids per SQL query (well under every database's bound-parameter limit)
_THREADS = 8  # get_metric_history calls in flight on the API path
_SQLITE_THREADS = 2
_PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3


# ------------------------------------------------------------------------------------- store URI
def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (resolved), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def is_sql_uri(uri: str) -> bool:
    """Whether the URI names a database store (its `metrics` table can be read directly)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in _SQL_SCHEMES


# ------------------------------------------------------------------------------------- points
class Points:
    """Metric points of many runs as parallel arrays; `run` and `key` are codes into the lists."""

    def __init__(self, run_ids: list[str], keys: list[str], run: np.ndarray, key: np.ndarray,
                 step: np.ndarray, timestamp: np.ndarray, value: np.ndarray, deduped: bool = False
                 ) -> None:
        self.run_ids, self.keys = run_ids, keys
        self.run, self.key, self.step, self.timestamp, self.value = run, key, step, timestamp, value
        self.deduped = deduped  # sorted by (run, key, step) with one point per step

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def take(self, idx: np.ndarray) -> Points:
        return Points(self.run_ids, self.keys, self.run[idx], self.key[idx], self.step[idx],
                      self.timestamp[idx], self.value[idx], self.deduped)


def _from_columns(run_order: list[str], run_col: Iterable, key_col: Iterable, step: np.ndarray,
                  timestamp: np.ndarray, value: np.ndarray, is_nan: np.ndarray | None) -> Points:
    """Points from row columns; run codes index `run_order`, key codes the sorted keys."""
    run_codes = pd.Categorical(np.asarray(run_col, dtype=object), categories=run_order).codes
    key_codes, keys = pd.factorize(np.asarray(key_col, dtype=object), sort=True)
    value = np.asarray(value, dtype=np.float64)
    if is_nan is not None and is_nan.any():
        value = np.where(is_nan, np.nan, value)
    value = np.where(value >= _SQL_MAX, np.inf, np.where(value <= -_SQL_MAX, -np.inf, value))
    return Points(list(run_order), list(keys), run_codes.astype(np.int64), key_codes.astype(np.int64),
                  np.asarray(step, dtype=np.int64), np.asarray(timestamp, dtype=np.int64), value)


def _empty_points() -> Points:
    z = np.zeros(0, dtype=np.int64)
    return Points([], [], z, z, z, z, np.zeros(0))


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def sql_points(uri: str, client, runs: list, wanted: tuple[str, ...] | None) -> Points:
    """All points of `runs` (keys starting with one of `wanted`) from the `metrics` table."""
    db = sqlite_path(uri)
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


def _sqlite_points(db: Path, runs: list, wanted: tuple[str, ...] | None) -> Points:
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
    return Points([r.info.run_id for r in runs], keys, np.repeat(run_codes, sizes),
                  np.repeat(key_codes, sizes), np.concatenate([p[0] for p in parts]),
                  np.zeros(int(sizes.sum()), dtype=np.int64), value, deduped=True)


def _sqlalchemy_points(uri: str, runs: list, wanted: tuple[str, ...] | None) -> Points:
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


def api_points(uri: str, client, runs: list, wanted: tuple[str, ...] | None) -> Points:
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


def dedupe(points: Points) -> Points:
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


def series_frame(points: Points, prefixes: tuple[str, ...] | None) -> pd.DataFrame:
    if prefixes is not None and len(points):
        keep = np.array([k.startswith(prefixes) for k in points.keys], dtype=bool)
        points = points.take(np.flatnonzero(keep[points.key]))
    if not len(points):
        return pd.DataFrame({F.RUN_ID: pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype=object), "value": pd.Series(dtype="float64")})
    return pd.DataFrame({F.RUN_ID: _strings(points.run_ids, points.run), "step": points.step,
                         "metric": _strings(points.keys, points.key), "value": points.value},
                        columns=list(F.SERIES_COLUMNS))
