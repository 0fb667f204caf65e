"""Seeds: one run seed derives independent streams for init and data order.

Two arms with the same `train.seed` therefore see the same batches in the same order and draw
their initial weights from the same stream, so per-seed differences isolate the intervention.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seeds(seed: int) -> dict[str, int]:
    """`{"init": ..., "data": ...}`: independent 63-bit seeds from one run seed."""
    init_state, data_state = np.random.SeedSequence(seed).spawn(2)
    return {
        "init": int(init_state.generate_state(1, np.uint64)[0] >> np.uint64(1)),
        "data": int(data_state.generate_state(1, np.uint64)[0] >> np.uint64(1)),
    }


def init_generator(seed: int) -> torch.Generator:
    """The CPU generator the model's init draws from (weights are moved to the device after)."""
    return torch.Generator().manual_seed(derive_seeds(seed)["init"])
