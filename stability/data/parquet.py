"""Parquet corpora: one document per row of the string column `data.text_field`.

Most public pretraining sets ship as Parquet shards (a folder of `*.parquet`, often beside a
README). Shards are read in sorted relative-path order, batch by batch within row groups, and
reading stops once `max_bytes` of text is taken, so a prefix of a large set never loads whole.
Null and empty rows are skipped. The column is checked in every shard opened, so a wrong
`text_field` is one line naming the shard and the columns it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import ConfigError

PARQUET_SUFFIX = ".parquet"
_ROWS_PER_BATCH = 1024  # rows decoded at a time (a row group is read in such slices)


def parquet_shards(root: Path) -> list[Path]:
    """The `*.parquet` files under `root` (recursive, hidden entries skipped), sorted by path."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(PARQUET_SUFFIX) and not name.startswith("."):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def is_text_type(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type holds strings."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
        pa.types.is_string_view(kind)


def check_text_column(schema: pa.Schema, text_field: str, path: Path) -> None:
    """`ConfigError` unless `schema` has a string column `text_field`; lists what is there."""
    text_columns = [f.name for f in schema if is_text_type(f.type)]
    allowed = ", ".join(text_columns) or "none: no string column"
    columns = ", ".join(f"{f.name} {f.type}" for f in schema)
    if text_field not in schema.names:
        raise ConfigError(f"data.text_field: no column '{text_field}' in '{path}' "
                          f"(allowed: {allowed}; columns: {columns})")
    kind = schema.field(text_field).type
    if not is_text_type(kind):
        raise ConfigError(f"data.text_field: column '{text_field}' of '{path}' is {kind}, not "
                          f"a string (allowed: {allowed}; columns: {columns})")


def _shard_texts(path: Path, text_field: str) -> Iterator[str | None]:
    """The column's values in row order, read a batch at a time."""
    with pq.ParquetFile(path) as shard:
        check_text_column(shard.schema_arrow, text_field, path)
        for batch in shard.iter_batches(batch_size=_ROWS_PER_BATCH, columns=[text_field]):
            yield from batch.column(0).to_pylist()


def _readable(path: Path, text_field: str) -> Iterator[str | None]:
    """`_shard_texts`, with a damaged or non-Parquet file turned into one `data.corpus` line."""
    try:
        yield from _shard_texts(path, text_field)
    except (pa.ArrowException, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"data.corpus: '{path}' is not a readable Parquet file ({reason})"
        ) from None


def parquet_documents(paths: list[Path], text_field: str, max_bytes: int) -> Iterator[bytes]:
    """UTF-8 documents from the shards in order, the running total capped at `max_bytes`."""
    left = max_bytes
    for path in paths:
        if left <= 0:
            return
        for text in _readable(path, text_field):
            if left <= 0:
                return
            if not text:
                continue
            data = text.encode("utf-8")[:left]
            left -= len(data)
            yield data
