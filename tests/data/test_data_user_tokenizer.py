"""A user's own tokenizer.json (`data.tokenizer`): its ids and EOS, the cache key, the errors."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from stability.data import build_data
from stability.data.config import ConfigError
from stability.data.corpus import load_corpus
from stability.data.hf_tokenizer import id_count
from stability.data.tokenizer import cache_dir
from tests.data.helpers import encoded, write_tokenizer


@pytest.fixture
def corpus(text_folder):
    """The text folder and its documents."""
    return text_folder


@pytest.fixture
def tok_path(tmp_path, make_docs):
    """A tokenizer.json of 400 ids trained on other text than the corpus, EOS `</s>` at id 2."""
    path = tmp_path / "user-tok" / "tokenizer.json"
    write_tokenizer(path, make_docs(40, seed=9), 400, ["<pad>", "<unk>", "</s>"])
    return path


def test_tokens_come_from_the_file_with_its_eos(make_cfg, corpus, tok_path) -> None:
    root, docs = corpus
    cfg = make_cfg(corpus=str(root), tokenizer=str(tok_path))
    data = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    tok = data.tokenizer
    assert tok.to_str() == Tokenizer.from_file(str(tok_path)).to_str()
    assert data.eos_id == 2 and data.vocab_used == id_count(tok)
    files = sorted(p.name for p in cache_dir(cfg).iterdir())
    assert len(files) == 1 and files[0].startswith("tokens-file-")  # no BPE was trained
    stored = np.load(cache_dir(cfg) / files[0])
    np.testing.assert_array_equal(stored, encoded(tok, docs, 2))
    assert data.stats["tokens"] == stored.size and not data.stats["cache_hit"]
    assert "</s>" in data.stats["tokenizer"] and str(tok_path) in data.stats["tokenizer"]
    again = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    assert again.stats["cache_hit"] and again.fingerprint == data.fingerprint
    np.testing.assert_array_equal(again.train, data.train)


def test_fingerprint_and_cache_follow_the_file_content(make_cfg, corpus, tok_path) -> None:
    root, docs = corpus
    cfg = make_cfg(corpus=str(root), tokenizer=str(tok_path))
    first = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    trained = build_data(make_cfg(corpus=str(root)), vocab_size=512, seq_len=31, seed=0)
    assert first.fingerprint != trained.fingerprint
    assert trained.fingerprint == load_corpus(make_cfg(corpus=str(root)), 512).fingerprint
    # the same path, another tokenizer: a new fingerprint and new tokens, never the stale ones
    other = write_tokenizer(tok_path, docs, 300, ["<pad>", "<unk>", "</s>"])
    second = build_data(cfg, vocab_size=512, seq_len=31, seed=0)
    assert not second.stats["cache_hit"] and second.fingerprint != first.fingerprint
    rows = np.concatenate([second.train, second.val]).ravel()
    assert int(rows.max()) < id_count(other) <= 300
    stored = sorted(cache_dir(cfg).glob("tokens-file-*.npy"))
    assert len(stored) == 2
    assert any(np.array_equal(np.load(p), encoded(other, docs, 2)) for p in stored)
    # another EOS in the same file is another stream too
    pad = build_data(make_cfg(corpus=str(root), tokenizer=str(tok_path), eos_token="<pad>"),
                     vocab_size=512, seq_len=31, seed=0)
    assert pad.eos_id == 0 and pad.fingerprint != second.fingerprint


def test_eos_found_by_name_or_named_by_the_user(make_cfg, corpus, tmp_path) -> None:
    root, _ = corpus
    texts = ["some text to learn merges from " * 20]
    gpt = tmp_path / "gpt" / "tokenizer.json"
    write_tokenizer(gpt, texts, 300, ["<|pad|>", "</s>", "<|endoftext|>"])
    data = build_data(make_cfg(corpus=str(root), tokenizer=str(gpt.parent)), vocab_size=512,
                      seq_len=31, seed=0)  # a folder holding tokenizer.json works too
    assert data.eos_id == 2  # <|endoftext|> is looked for before </s>
    none = tmp_path / "none.json"
    write_tokenizer(none, texts, 300, ["<pad>", "<sep>"])
    msg = (r"^data\.eos_token: '.*none\.json' has none of <\|endoftext\|>, .*; name its "
           r"end-of-text token \(allowed: one of its special tokens: <pad>, <sep>\)$")
    with pytest.raises(ConfigError, match=msg):
        build_data(make_cfg(corpus=str(root), tokenizer=str(none)), vocab_size=512, seq_len=31,
                   seed=0)
    named = build_data(make_cfg(corpus=str(root), tokenizer=str(none), eos_token="<sep>"),
                       vocab_size=512, seq_len=31, seed=0)
    assert named.eos_id == 1
    with pytest.raises(ConfigError, match=r"^data\.eos_token: '<eos>' is not a token of "):
        build_data(make_cfg(corpus=str(root), tokenizer=str(none), eos_token="<eos>"),
                   vocab_size=512, seq_len=31, seed=0)


def test_vocabulary_larger_than_the_model_fails_first(make_cfg, corpus, tok_path) -> None:
    root, _ = corpus
    cfg = make_cfg(corpus=str(root), tokenizer=str(tok_path))
    n = id_count(build_data(cfg, vocab_size=400, seq_len=31, seed=0).tokenizer)
    assert n == 400  # exactly the model's size is fine; one more id is not
    fresh = make_cfg(corpus=str(root / "not-read-yet"), tokenizer=str(tok_path),
                     cache_dir=str(cache_dir(cfg).parent / "fresh-cache"))
    msg = (rf"^data\.tokenizer: '.*tokenizer\.json' has {n} ids > model\.vocab_size 399 "
           rf"\(allowed: a tokenizer of at most 399 ids, or model\.vocab_size >= {n}\)$")
    with pytest.raises(ConfigError, match=msg):  # before the (missing) corpus is even looked at
        build_data(fresh, vocab_size=399, seq_len=31, seed=0)
    assert not cache_dir(fresh).exists()


def test_tokenizer_vocab_is_ignored_with_a_file(make_cfg, corpus, tok_path) -> None:
    root, _ = corpus
    data = build_data(make_cfg(corpus=str(root), tokenizer=str(tok_path), tokenizer_vocab=260),
                      vocab_size=512, seq_len=31, seed=0)
    assert data.vocab_used == id_count(data.tokenizer) > 260


def test_unreadable_tokenizer_paths(make_cfg, corpus, tmp_path) -> None:
    root, _ = corpus
    cases = {
        str(tmp_path / "missing.json"): r"^data\.tokenizer: path '.*missing\.json' does not exist",
        str(tmp_path): r"^data\.tokenizer: folder '.*' has no tokenizer\.json",
        str(tmp_path / "bad.json"): r"^data\.tokenizer: '.*bad\.json' is not a Hugging Face "
                                    r"tokenizer\.json \(.+\)$",
    }
    (tmp_path / "bad.json").write_text('{"version": "1.0", "model": 3}')
    for spec, msg in cases.items():
        with pytest.raises(ConfigError, match=msg) as err:
            build_data(make_cfg(corpus=str(root), tokenizer=spec), vocab_size=512, seq_len=31,
                       seed=0)
        assert "\n" not in str(err.value)


def test_keys_that_need_a_text_corpus_or_a_file(make_cfg, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.eos_token: '</s>' needs data\.tokenizer"):
        make_cfg(eos_token="</s>").validate()
    msg = r"^data\.tokenizer: corpus 'toks\.npy' is already tokenized \(allowed: '' with"
    with pytest.raises(ConfigError, match=msg):
        make_cfg(corpus="toks.npy", tokenizer=str(tmp_path / "tokenizer.json")).validate()
