"""Shared fixtures for the data-pipeline tests: small corpora and per-test cache dirs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stability.data import DataConfig

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega", "loss", "spike", "norm", "gradient", "token", "layer",
]


def make_documents(n_docs: int, seed: int = 0, words: int = 120) -> list[str]:
    """ASCII documents of pseudo-random words (deterministic)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        body = " ".join(rng.choice(WORDS) for _ in range(words + rng.randrange(words)))
        docs.append(f"Document {i}.\n{body}\n")
    return docs


@pytest.fixture
def make_cfg(tmp_path: Path):
    """DataConfig factory with the cache inside this test's tmp_path."""

    def factory(**kwargs) -> DataConfig:
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        return DataConfig(**kwargs)

    return factory


@pytest.fixture
def text_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder of .txt documents (file names sort in document order)."""
    root = tmp_path / "texts"
    root.mkdir()
    docs = make_documents(40)
    for i, doc in enumerate(docs):
        (root / f"doc{i:03d}.txt").write_text(doc)
    return root, docs


@pytest.fixture
def make_docs():
    """The `make_documents` helper, as a fixture (test modules do not import conftest)."""
    return make_documents
