"""Shared test setup: one tokenizer/token cache per session, tiny runs in temp folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep tokenizer and token caches out of the user's home, shared by all tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STABILITY_CACHE", str(tmp_path_factory.mktemp("stability_cache")))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(2)
    yield
    mp.undo()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
