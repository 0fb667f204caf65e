"""Shared setup for the model tests: a fixed torch seed for every test's inputs."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
