"""Dense per-layer / per-head diagnostics as a columnar artifact (docs/architecture.md, cost rules).

MLflow gets the headline series; everything indexed by layer or head goes here as long rows
(step int64, key string, layer int32, head int32 (-1: not per head), value float32), buffered in
memory and written as `part-00000.parquet`, `part-00001.parquet`, ... in one directory. A part
appears atomically (written to a temporary name, then `os.replace`), so a reader never sees a
half-written part and a crash loses at most the rows added since the last flush (flush at every
read-out, or every `flush_every_rows` rows).

Resume: a run resumed from a checkpoint re-writes the steps between the checkpoint and the crash.
The writer does not need to know that: `read_dense` keeps the LAST occurrence of every
(step, key, layer, head), in part order then row order, so the rows of the resumed trajectory win
and no duplicate survives. A new writer continues the numbering after the parts already there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("step", "key", "layer", "head", "value")
IDENTITY = ["step", "key", "layer", "head"]
_PART = re.compile(r"^part-(\d+)\.parquet$")


def part_files(directory: str | Path) -> list[Path]:
    """The finished part files in `directory`, in write order (empty when it does not exist)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _PART.match(p.name))]
    return [p for _, p in sorted(found)]


class DenseWriter:
    """Buffers long rows and writes them as numbered Parquet parts into `directory`."""

    def __init__(self, directory: str | Path, flush_every_rows: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("part-*.parquet.tmp"):  # a crash inside a flush
            stale.unlink(missing_ok=True)
        existing = part_files(self.directory)
        self._next = int(_PART.match(existing[-1].name).group(1)) + 1 if existing else 0
        self.flush_every_rows = flush_every_rows
        self._chunks: list[tuple[np.ndarray, str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._rows = 0

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def add(self, step: int, key: str, values, index_name: str = "layer",
            layers: list[int] | None = None) -> None:
        """Add one step of `key`: a 1-D array indexed by `index_name` ("layer" or "head"; the
        other index is -1), or a 2-D (layer, head) array. `layers` names the layer of each
        layer position when they are not 0, 1, 2, ... (a probed subset)."""
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim == 1:
            idx = np.arange(arr.shape[0], dtype=np.int32)
            minus = np.full(arr.shape[0], -1, dtype=np.int32)
            if index_name == "layer":
                layer, head = idx, minus
            elif index_name == "head":
                layer, head = minus, idx
            else:
                raise ValueError(f"index_name must be 'layer' or 'head', not {index_name!r}")
        elif arr.ndim == 2:
            n_layers, n_heads = arr.shape
            layer = np.repeat(np.arange(n_layers, dtype=np.int32), n_heads)
            head = np.tile(np.arange(n_heads, dtype=np.int32), n_layers)
            arr = arr.reshape(-1)
        else:
            raise ValueError(f"values must be 1-D or 2-D (layer, head), got shape {arr.shape}")
        if layers is not None:
            ids = np.asarray(layers, dtype=np.int32)
            layer = np.where(layer >= 0, ids[np.clip(layer, 0, None)], layer)
        steps = np.full(arr.shape[0], int(step), dtype=np.int64)
        self._chunks.append((steps, str(key), layer, head, arr))
        self._rows += arr.shape[0]
        if self.flush_every_rows and self._rows >= self.flush_every_rows:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered rows as the next part (atomically); None when nothing is buffered."""
        if not self._chunks:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "step": pa.array(np.concatenate([c[0] for c in self._chunks])),
            "key": pa.array(np.concatenate([np.full(c[4].shape[0], c[1], dtype=object)
                                            for c in self._chunks]), type=pa.string()),
            "layer": pa.array(np.concatenate([c[2] for c in self._chunks])),
            "head": pa.array(np.concatenate([c[3] for c in self._chunks])),
            "value": pa.array(np.concatenate([c[4] for c in self._chunks])),
        })
        path = self.directory / f"part-{self._next:05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._next += 1
        self._chunks.clear()
        self._rows = 0
        return path

    def close(self) -> Path | None:
        return self.flush()

    def __enter__(self) -> DenseWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def read_dense(directory: str | Path) -> pd.DataFrame:
    """All parts of `directory` as one frame (columns COLUMNS), sorted by (step, key, layer, head),
    with the last written row of each (step, key, layer, head) kept (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = part_files(directory)
    if not parts:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "key": pd.Series(dtype=object),
                             "layer": pd.Series(dtype="int32"), "head": pd.Series(dtype="int32"),
                             "value": pd.Series(dtype="float32")})
    df = pa.concat_tables([pq.read_table(p) for p in parts]).to_pandas()
    df = df.drop_duplicates(subset=IDENTITY, keep="last")
    return df.sort_values(IDENTITY, kind="stable").reset_index(drop=True)[list(COLUMNS)]
