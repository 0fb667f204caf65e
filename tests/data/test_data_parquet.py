"""Parquet corpora: a file or a folder of shards, the text column, `max_bytes`, the errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stability.data import build_data
from stability.data.config import ConfigError
from stability.data.corpus import load_corpus
from tests.data.helpers import write_parquet


def test_one_file_rows_in_order_nulls_and_empties_skipped(make_cfg, tmp_path, make_docs) -> None:
    docs = make_docs(20, seed=3)
    rows = [*docs[:5], None, "", *docs[5:]]
    path = tmp_path / "train.parquet"
    write_parquet(path, {"id": list(range(len(rows))), "text": rows}, row_group_size=3)
    corpus = load_corpus(make_cfg(corpus=str(path)), 512)
    assert corpus.documents == docs
    assert corpus.description == f"parquet file {path}, column 'text'"
    data = build_data(make_cfg(corpus=str(path)), vocab_size=400, seq_len=31, seed=0)
    assert data.stats["documents"] == 20 and data.train.shape[0] > 0


def test_max_bytes_is_a_prefix_across_row_groups(make_cfg, tmp_path, make_docs) -> None:
    docs = make_docs(12, seed=5)
    path = tmp_path / "train.parquet"
    write_parquet(path, {"text": docs}, row_group_size=2)
    cap = len(docs[0]) + len(docs[1]) + len(docs[2]) + 10  # 3 docs and 10 bytes, over 2 row groups
    capped = load_corpus(make_cfg(corpus=str(path), max_bytes=cap), 512)
    assert capped.documents == [*docs[:3], docs[3][:10]] and capped.n_bytes == cap
    whole = load_corpus(make_cfg(corpus=str(path)), 512)
    assert capped.fingerprint != whole.fingerprint


def test_folder_of_shards_sorted_readme_ignored(make_cfg, tmp_path, make_docs) -> None:
    docs = make_docs(9, seed=7)
    root = tmp_path / "dataset"
    write_parquet(root / "data" / "train-00001.parquet", {"text": docs[3:6]})
    write_parquet(root / "data" / "train-00000.parquet", {"text": docs[:3]})
    write_parquet(root / "data" / "train-00002.parquet", {"text": docs[6:]})
    (root / "README.md").write_text("# A dataset card, not a document\n")
    corpus = load_corpus(make_cfg(corpus=str(root)), 512)
    assert corpus.documents == docs
    assert "parquet folder" in corpus.description and "3 shards" in corpus.description
    one = tmp_path / "one"
    write_parquet(one / "all.parquet", {"text": docs})  # same text, other sharding: same data
    assert load_corpus(make_cfg(corpus=str(one)), 512).fingerprint == corpus.fingerprint


def test_shards_past_max_bytes_are_never_opened(make_cfg, tmp_path, make_docs) -> None:
    docs = make_docs(4, seed=1)
    root = tmp_path / "shards"
    write_parquet(root / "a.parquet", {"text": docs})
    (root / "b.parquet").write_bytes(b"not a parquet file at all")
    small = load_corpus(make_cfg(corpus=str(root), max_bytes=len(docs[0])), 512)
    assert small.documents == docs[:1]
    msg = r"^data\.corpus: '.*b\.parquet' is not a readable Parquet file \(.+\)$"
    with pytest.raises(ConfigError, match=msg):
        load_corpus(make_cfg(corpus=str(root)), 512)


def test_wrong_or_non_string_column_is_one_line(make_cfg, tmp_path, make_docs) -> None:
    path = tmp_path / "shard.parquet"
    write_parquet(path, {"id": [1, 2], "body": make_docs(2), "title": ["a", "b"]})
    msg = (r"^data\.text_field: no column 'text' in '.*shard\.parquet' \(allowed: body, title; "
           r"columns: id int64, body string, title string\)$")
    with pytest.raises(ConfigError, match=msg):
        build_data(make_cfg(corpus=str(path)), vocab_size=400, seq_len=31, seed=0)
    msg = r"^data\.text_field: column 'id' of '.*shard\.parquet' is int64, not a string \(allowed: b"
    with pytest.raises(ConfigError, match=msg):
        load_corpus(make_cfg(corpus=str(path), text_field="id"), 512)
    assert load_corpus(make_cfg(corpus=str(path), text_field="body"), 512).documents == \
        make_docs(2)


def test_large_string_column_and_empty_shards(make_cfg, tmp_path) -> None:
    path = tmp_path / "large.parquet"
    write_parquet(path, {"text": pa.array(["first doc", "second doc"], type=pa.large_string())})
    assert load_corpus(make_cfg(corpus=str(path)), 512).documents == ["first doc", "second doc"]
    empty = tmp_path / "empty.parquet"
    write_parquet(empty, {"text": pa.array([None, ""], type=pa.string())})
    with pytest.raises(ConfigError, match=r"^data\.corpus: '.*empty\.parquet' holds no text$"):
        load_corpus(make_cfg(corpus=str(empty)), 512)
