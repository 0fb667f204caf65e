"""Read the documents of `DataConfig.corpus`: the stdlib default, text, JSONL, Parquet, tokens.

The default corpus (`corpus = "stdlib"`) is this interpreter's standard-library source tree
(`sysconfig.get_paths()["stdlib"]`): every `*.py`, `*.txt` and `*.rst` file, sorted by its
relative POSIX path, leaving out any path with a directory named `test`, `tests`, `idlelib`,
`site-packages`, `dist-packages`, `__pycache__`, `ensurepip`, `lib2to3`, `turtledemo` or
`tkinter`, or with any segment (directory or file name) starting with `test_`. One file is one
document; files are read in that order until `max_bytes` bytes are taken (the last one cut), so the
selection is a fixed prefix, reproducible for a given Python version.

Paths: a folder (recursive, sorted, files ending .txt .md .rst .py .text, hidden entries skipped;
a folder holding any `.parquet` file is read as Parquet shards only, so a dataset's README is not
a document), a `.jsonl` file (one document per line, field `text_field`), a `.parquet` file (one
document per row of the string column `text_field`, see parquet.py), a `.npy` / `.bin`
pre-tokenized token file (uint16 / uint32, memory-mapped, used whole: `max_bytes` caps text only),
or any other file (one document). Text is decoded as UTF-8 with replacement characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import TOKEN_SUFFIXES, ConfigError, DataConfig
from .parquet import PARQUET_SUFFIX, parquet_documents, parquet_shards

STDLIB_SUFFIXES = (".py", ".txt", ".rst")
STDLIB_EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "ensurepip",
        "lib2to3",
        "turtledemo",
        "tkinter",
    }
)
FOLDER_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
_FORMAT = "olmo-stability-corpus-v1"


def describe_default_corpus() -> str:
    """One sentence describing the default `stdlib` corpus selection, for the README."""
    excluded = ", ".join(sorted(STDLIB_EXCLUDED_DIRS))
    return (
        "The default corpus is this Python's standard-library source tree "
        "(sysconfig.get_paths()['stdlib']): every .py, .txt and .rst file, sorted by relative "
        f"POSIX path, excluding directories named {excluded} and any path segment starting "
        "with 'test_', one file per document, read in that order up to data.max_bytes bytes "
        "(a fixed prefix, reproducible for a given Python version)."
    )


@dataclass
class TextCorpus:
    """Documents as text, plus their content fingerprint."""

    documents: list[str]
    fingerprint: str
    description: str
    n_bytes: int


@dataclass
class TokenCorpus:
    """A pre-tokenized token stream (memory-mapped), documents separated by `eos_id`."""

    tokens: np.ndarray
    eos_id: int
    fingerprint: str
    description: str
    n_documents: int
    extra: dict = field(default_factory=dict)


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The default corpus selection under `root` (the stdlib by default), in reading order."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [
            d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("test_")
        ]
        for name in filenames:
            if name.endswith(STDLIB_SUFFIXES) and not name.startswith("test_"):
                path = Path(dirpath) / name
                found.append((path.relative_to(base).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def _folder_files(root: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(FOLDER_SUFFIXES) and not name.startswith("."):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def _take_files(paths: list[Path], max_bytes: int) -> Iterator[bytes]:
    """File contents in order, the running total capped at `max_bytes` (last file cut)."""
    left = max_bytes
    for path in paths:
        if left <= 0:
            return
        with open(path, "rb") as fh:
            data = fh.read(left)
        left -= len(data)
        yield data


def _jsonl_docs(path: Path, text_field: str, max_bytes: int) -> Iterator[bytes]:
    left = max_bytes
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if left <= 0:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"data.corpus: '{path}' line {lineno} is not valid JSON ({err.msg})"
                ) from None
            if not isinstance(record, dict) or text_field not in record:
                raise ConfigError(
                    f"data.corpus: '{path}' line {lineno} has no '{text_field}' field "
                    "(allowed: set data.text_field)"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise ConfigError(
                    f"data.corpus: '{path}' line {lineno} field '{text_field}' is not a string"
                )
            data = text.encode("utf-8")[:left]
            left -= len(data)
            yield data


def _text_corpus(chunks: Iterator[bytes], params: dict, description: str, spec: str) -> TextCorpus:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    documents: list[str] = []
    n_bytes = 0
    for data in chunks:
        if not data:
            continue
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        documents.append(data.decode("utf-8", errors="replace"))
        n_bytes += len(data)
    if not documents:
        raise ConfigError(f"data.corpus: '{spec}' holds no text")
    return TextCorpus(documents, digest.hexdigest(), description, n_bytes)


def _open_tokens(path: Path, cfg: DataConfig) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConfigError(
                f"data.corpus: '{path}' is not a readable .npy file ({err})"
            ) from None
        name = tokens.dtype.name
        if name not in ("uint16", "uint32"):
            raise ConfigError(
                f"data.corpus: '{path}' has dtype {name} (allowed: uint16, uint32)"
            )
        if cfg.token_dtype != "auto" and cfg.token_dtype != name:
            raise ConfigError(
                f"data.token_dtype: file dtype {name} does not match token_dtype "
                f"{cfg.token_dtype} (allowed: auto, {name})"
            )
        return tokens.reshape(-1)
    if cfg.token_dtype == "auto":
        raise ConfigError(
            f"data.token_dtype: '{path}' is a raw .bin token file; set token_dtype "
            "(allowed: uint16, uint32)"
        )
    dtype = np.dtype(cfg.token_dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ConfigError(
            f"data.token_dtype: '{path}' has {size} bytes, not a multiple of {dtype.itemsize} "
            f"for {cfg.token_dtype}"
        )
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _token_corpus(path: Path, cfg: DataConfig, vocab_size: int) -> TokenCorpus:
    tokens = _open_tokens(path, cfg)
    if tokens.size == 0:
        raise ConfigError(f"data.corpus: '{path}' holds no tokens")
    top = int(tokens.max())
    if top >= vocab_size:
        raise ConfigError(f"data.corpus: token id {top} >= model.vocab_size {vocab_size}")
    if cfg.eos_id >= vocab_size:
        raise ConfigError(f"data.eos_id: {cfg.eos_id} >= model.vocab_size {vocab_size}")
    params = {"format": _FORMAT, "kind": "tokens", "dtype": tokens.dtype.name, "eos": cfg.eos_id}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    step = 1 << 24
    for start in range(0, tokens.size, step):
        digest.update(np.ascontiguousarray(tokens[start : start + step]).tobytes())
    if cfg.eos_id >= 0:
        n_eos = int(np.count_nonzero(tokens == cfg.eos_id))
        n_docs = n_eos + int(tokens[-1] != cfg.eos_id)
    else:
        n_docs = 1
    desc = f"token file {path} ({tokens.dtype.name}, {tokens.size} tokens)"
    return TokenCorpus(tokens, cfg.eos_id, digest.hexdigest(), desc, n_docs, {"max_id": top})


def _parquet_corpus(paths: list[Path], cfg: DataConfig, what: str) -> TextCorpus:
    params = {"format": _FORMAT, "max_bytes": cfg.max_bytes, "kind": "parquet",
              "text_field": cfg.text_field}
    desc = f"{what}, column '{cfg.text_field}'"
    return _text_corpus(parquet_documents(paths, cfg.text_field, cfg.max_bytes), params, desc,
                        cfg.corpus)


def load_corpus(cfg: DataConfig, vocab_size: int) -> TextCorpus | TokenCorpus:
    """Read `cfg.corpus`; raise `ConfigError` (`data.corpus: ...`) when it is missing or empty."""
    spec = cfg.corpus
    base = {"format": _FORMAT, "max_bytes": cfg.max_bytes}
    if spec == "stdlib":
        root = sysconfig.get_paths()["stdlib"]
        files = stdlib_files(root)
        desc = f"stdlib sources of Python {sysconfig.get_python_version()} ({root})"
        return _text_corpus(_take_files(files, cfg.max_bytes), {**base, "kind": "stdlib"},
                            desc, spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"data.corpus: path '{spec}' does not exist")
    if path.is_dir() and (shards := parquet_shards(path)):
        return _parquet_corpus(shards, cfg, f"parquet folder {path} ({len(shards)} shards)")
    if path.suffix == PARQUET_SUFFIX:
        return _parquet_corpus([path], cfg, f"parquet file {path}")
    if path.is_dir():
        files = _folder_files(path)
        desc = f"text folder {path} ({len(files)} files)"
        return _text_corpus(_take_files(files, cfg.max_bytes), {**base, "kind": "folder"},
                            desc, spec)
    if path.suffix in TOKEN_SUFFIXES:
        return _token_corpus(path, cfg, vocab_size)
    if path.suffix == ".jsonl":
        params = {**base, "kind": "jsonl", "text_field": cfg.text_field}
        docs = _jsonl_docs(path, cfg.text_field, cfg.max_bytes)
        return _text_corpus(docs, params, f"jsonl file {path} (field '{cfg.text_field}')", spec)
    docs = _take_files([path], cfg.max_bytes)
    return _text_corpus(docs, {**base, "kind": "file"}, f"text file {path}", spec)
