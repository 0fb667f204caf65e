"""Corpus sources: text folder, JSONL, token files, the stdlib default, and their errors."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from stability.data import build_data, describe_default_corpus
from stability.data.config import ConfigError
from stability.data.corpus import STDLIB_EXCLUDED_DIRS, load_corpus, stdlib_files


def test_text_folder_recursive_sorted(make_cfg, tmp_path) -> None:
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b" / "z.md").write_text("second document")
    (root / "a.txt").write_text("first document")
    (root / "c.py").write_text("print('third')")
    (root / "ignored.csv").write_text("x,y")
    (root / "empty.txt").write_text("")
    (root / ".hidden" / "x.txt").write_text("hidden")
    corpus = load_corpus(make_cfg(corpus=str(root)), 1000)
    assert corpus.documents == ["first document", "second document", "print('third')"]
    capped = load_corpus(make_cfg(corpus=str(root), max_bytes=20), 1000)
    assert capped.documents == ["first document", "second"]
    assert capped.fingerprint != corpus.fingerprint


def test_jsonl_documents_and_missing_field(make_cfg, tmp_path, make_docs) -> None:
    docs = make_docs(30, seed=4)
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    data = build_data(make_cfg(corpus=str(path), text_field="body"), vocab_size=350,
                      seq_len=31, seed=0)
    assert data.stats["documents"] == 30 and "jsonl" in data.stats["source"]
    with pytest.raises(ConfigError, match=r"^data\.corpus: '.*docs\.jsonl' line 1 has no 'text'"):
        build_data(make_cfg(corpus=str(path)), vocab_size=350, seq_len=31, seed=0)
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"other": "x"})
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=r"line 7 has no 'body' field"):
        load_corpus(make_cfg(corpus=str(path), text_field="body"), 350)


def test_npy_uint16_token_file(make_cfg, tmp_path) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, size=5000).astype(np.uint16)
    tokens[::97] = 0  # document separators
    path = tmp_path / "tokens.npy"
    np.save(path, tokens)
    data = build_data(make_cfg(corpus=str(path), eos_id=0), vocab_size=1024, seq_len=63, seed=0)
    assert data.tokenizer is None and data.eos_id == 0
    assert data.vocab_used == int(tokens.max()) + 1
    assert data.stats["documents"] == int((tokens == 0).sum()) + 1
    n = data.train.shape[0] + data.val.shape[0]
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]).ravel(),
                                  tokens[: n * 64])
    assert data.train.dtype == np.uint16
    with pytest.raises(ConfigError, match=r"^data\.token_dtype: file dtype uint16 does not match"):
        build_data(make_cfg(corpus=str(path), token_dtype="uint32"), vocab_size=1024,
                   seq_len=63, seed=0)
    with pytest.raises(ConfigError, match=r"^data\.corpus: token id \d+ >= model\.vocab_size 512"):
        build_data(make_cfg(corpus=str(path)), vocab_size=512, seq_len=63, seed=0)


def test_bin_uint32_token_file(make_cfg, tmp_path) -> None:
    tokens = np.arange(4000, dtype=np.uint32) * 7919 % 70_000
    tokens[100::200] = 70_000  # the largest id, also the document separator
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    data = build_data(make_cfg(corpus=str(path), token_dtype="uint32", eos_id=70_000),
                      vocab_size=100_352, seq_len=127, seed=0)
    assert data.train.dtype == np.uint32 and int(data.train.max()) > 65_535
    batch = data.train_batch(0, 2)
    assert batch.input_ids.max() < 100_352
    with pytest.raises(ConfigError, match=r"^data\.token_dtype: .*tokens\.bin.*set token_dtype"):
        build_data(make_cfg(corpus=str(path)), vocab_size=100_352, seq_len=127, seed=0)
    msg = r"^data\.corpus: token id 70000 >= model\.vocab_size 50304"
    with pytest.raises(ConfigError, match=msg):
        build_data(make_cfg(corpus=str(path), token_dtype="uint32"), vocab_size=50_304,
                   seq_len=127, seed=0)


def test_missing_and_empty_sources(make_cfg, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.corpus: path '.*nope' does not exist$"):
        build_data(make_cfg(corpus=str(tmp_path / "nope")), vocab_size=300, seq_len=8, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.csv").write_text("not a text suffix")
    with pytest.raises(ConfigError, match=r"^data\.corpus: '.*empty' holds no text$"):
        build_data(make_cfg(corpus=str(empty)), vocab_size=300, seq_len=8, seed=0)
    (tmp_path / "none.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^data\.corpus: .*holds no tokens"):
        load_corpus(make_cfg(corpus=str(tmp_path / "none.bin"), token_dtype="uint16"), 300)


def test_stdlib_default(make_cfg) -> None:
    cfg = make_cfg(max_bytes=200_000)
    assert cfg.corpus == "stdlib"
    a = build_data(cfg, vocab_size=300, seq_len=64, seed=0)
    b = build_data(make_cfg(max_bytes=200_000), vocab_size=300, seq_len=64, seed=0)
    assert a.stats["documents"] > 0 and a.stats["bytes"] == 200_000
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.vocab_used == 300 and a.train.shape[0] > 10
    other = load_corpus(make_cfg(max_bytes=100_000), 300)
    assert other.fingerprint != a.fingerprint
    assert "standard-library" in describe_default_corpus()


def test_stdlib_selection_rule() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 100
    for r in rel:
        parts = r.split("/")
        assert r.endswith((".py", ".txt", ".rst"))
        assert not STDLIB_EXCLUDED_DIRS.intersection(parts[:-1])
        assert not any(part.startswith("test_") for part in parts)
