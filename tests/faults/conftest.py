"""Fixtures of the fault-injection suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def torch_threads():
    """Trainers built in this process set torch's thread count (train.threads=1); put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
