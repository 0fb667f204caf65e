"""Tokenizer and token caches: hits, atomic writes, keys, the vocabulary bound."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stability.data import build_data
from stability.data.config import ConfigError
from stability.data.tokenizer import cache_dir


def test_second_build_hits_cache(make_cfg, text_folder, tmp_path) -> None:
    root, _ = text_folder
    cfg = make_cfg(corpus=str(root))
    t0 = time.perf_counter()
    first = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    t1 = time.perf_counter()
    second = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    t2 = time.perf_counter()
    assert not first.stats["cache_hit"] and second.stats["cache_hit"]
    assert t2 - t1 < max(0.5, t1 - t0)
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)
    assert first.tokenizer.to_str() == second.tokenizer.to_str()
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and not any(name.endswith(".tmp") for name in files)
    assert any(n.startswith("tokenizer-") and n.endswith(".json") for n in files)
    # another vocabulary size is another key
    build_data(cfg, vocab_size=600, seq_len=31, seed=0)
    assert len(list((tmp_path / "cache").iterdir())) == 4
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_cache_dir_resolution(make_cfg, monkeypatch, tmp_path) -> None:
    assert cache_dir(make_cfg(cache_dir=str(tmp_path / "x"))) == tmp_path / "x"
    monkeypatch.setenv("STABILITY_CACHE", str(tmp_path / "env"))
    assert cache_dir(make_cfg(cache_dir="")) == tmp_path / "env"
    monkeypatch.delenv("STABILITY_CACHE")
    assert str(cache_dir(make_cfg(cache_dir=""))).endswith(".cache/olmo-stability")


def test_tokenizer_vocab_bound(make_cfg, text_folder) -> None:
    root, _ = text_folder
    with pytest.raises(ConfigError, match=r"^data\.tokenizer_vocab: 1024 > model\.vocab_size 512"):
        build_data(make_cfg(corpus=str(root), tokenizer_vocab=1024), vocab_size=512, seq_len=31,
                   seed=0)
    data = build_data(make_cfg(corpus=str(root), tokenizer_vocab=300), vocab_size=512,
                      seq_len=31, seed=0)
    assert data.vocab_used <= 300 and int(data.train.max()) < 300
