"""Dense per-layer / per-head rows: long format, atomic numbered parts, resume without duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from stability.dense import COLUMNS, DenseWriter, part_files, read_dense


def test_rows_are_long_with_layer_and_head_indices(tmp_path):
    w = DenseWriter(tmp_path)
    w.add(7, "act/rms", [1.0, 2.0, 3.0])
    w.add(7, "attn/logit_max", np.arange(6, dtype=np.float64).reshape(2, 3))
    w.add(7, "attn/entropy", [0.5, 0.25], index_name="head")
    assert w.buffered_rows == 3 + 6 + 2
    path = w.flush()
    assert path is not None and path.name == "part-00000.parquet"
    assert w.flush() is None  # nothing buffered: no empty part

    df = read_dense(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert str(df["value"].dtype) == "float32" and str(df["step"].dtype) == "int64"
    act = df[df.key == "act/rms"]
    assert act[["layer", "head"]].values.tolist() == [[0, -1], [1, -1], [2, -1]]
    attn = df[df.key == "attn/logit_max"]
    assert attn[["layer", "head", "value"]].values.tolist() == [
        [layer, head, layer * 3 + head] for layer in range(2) for head in range(3)]
    ent = df[df.key == "attn/entropy"]
    assert ent[["layer", "head"]].values.tolist() == [[-1, 0], [-1, 1]]
    assert set(df.step) == {7}


def test_flush_every_rows_writes_parts_atomically(tmp_path):
    w = DenseWriter(tmp_path, flush_every_rows=8)
    for step in range(10):
        w.add(step, "grad/norm", np.full(4, step))
    assert [p.name for p in part_files(tmp_path)] == [f"part-{i:05d}.parquet" for i in range(5)]
    assert not list(tmp_path.glob("*.tmp")) and w.buffered_rows == 0
    assert len(read_dense(tmp_path)) == 40


def test_a_crash_loses_at_most_the_unflushed_rows_and_tmp_files_are_ignored(tmp_path):
    w = DenseWriter(tmp_path)
    w.add(0, "k", [1.0, 2.0])
    w.flush()
    w.add(1, "k", [3.0, 4.0])  # never flushed: the process dies here
    (tmp_path / "part-00001.parquet.tmp").write_bytes(b"half a file")  # died inside a flush
    df = read_dense(tmp_path)
    assert df.step.tolist() == [0, 0]
    DenseWriter(tmp_path)  # a new writer clears the stale temporary file
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_rewrites_steps_and_read_keeps_the_last_of_each(tmp_path):
    first = DenseWriter(tmp_path)
    for step in range(15):
        first.add(step, "param/norm", np.full(3, step, dtype=np.float32))
        if step % 5 == 4:
            first.flush()  # parts 0..2 hold steps 0..14
    second = DenseWriter(tmp_path)  # resumed from the checkpoint at step 10
    for step in range(10, 20):
        second.add(step, "param/norm", np.full(3, 100 + step, dtype=np.float32))
    assert second.flush().name == "part-00003.parquet"  # numbering continues, nothing overwritten
    assert len(part_files(tmp_path)) == 4

    df = read_dense(tmp_path)
    assert not df.duplicated(["step", "key", "layer", "head"]).any()
    assert len(df) == 20 * 3
    per_step = df.groupby("step")["value"].first()
    assert per_step.loc[:9].tolist() == list(range(10))
    assert per_step.loc[10:].tolist() == [100 + s for s in range(10, 20)]


def test_empty_directory_and_bad_shapes(tmp_path):
    df = read_dense(tmp_path / "missing")
    assert list(df.columns) == list(COLUMNS) and df.empty
    w = DenseWriter(tmp_path)
    with pytest.raises(ValueError):
        w.add(0, "k", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        w.add(0, "k", [1.0], index_name="block")
