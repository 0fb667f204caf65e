"""The `dense/` and `spikes.csv` artifacts of a grid's runs as frames, for `reports.load`.

Artifacts are read on a thread pool, straight from the folder when the artifact location is local,
else downloaded to a temporary folder. A store copied from another machine (a sqlite file with its
`mlartifacts/` folder beside it) has artifact locations recorded as absolute paths on the other
machine: those are re-rooted next to the database.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from reports import frames as F
from stability import metric_names as M
from stability.tracking_io import DENSE_ARTIFACT_DIR

_THREADS = 8  # runs whose artifacts are read at once


def empty_dense() -> pd.DataFrame:
    return pd.DataFrame({F.RUN_ID: pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                         "key": pd.Series(dtype=object), "layer": pd.Series(dtype="int32"),
                         "head": pd.Series(dtype="int32"), "value": pd.Series(dtype="float32")})


def empty_spikes() -> pd.DataFrame:
    from stability.spikes import events_to_frame

    frame = events_to_frame([])
    frame.insert(0, F.RUN_ID, pd.Series(dtype=object))
    return frame


def concat_frames(frames: list[pd.DataFrame | None], columns: tuple[str, ...], empty: pd.DataFrame
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
    empty = empty_spikes()
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
    if "action" in out.columns:  # "" (no action) reads back from CSV as NaN; older files lack it
        out["action"] = out["action"].where(out["action"].notna(), "").astype(object)
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


def read_artifacts(client, runs: list, store_dir: Path | None, dense: bool) -> list[tuple]:
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
