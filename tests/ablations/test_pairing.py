"""Pairing: seed s gives every arm of a grid the same data order and the same init draws, so a
per-seed difference is the intervention's (docs/reference.md section 6)."""

from __future__ import annotations

import torch

import model
from ablations.spec import load_spec
from model.init import expected_std
from stability.data import build_data
from stability.seeding import derive_seeds, init_generator


def _cells(seed: int):
    return {c.arm: c for c in load_spec("quick").cells() if c.seed == seed}


def _tensor(m: torch.nn.Module, name: str) -> torch.Tensor:
    module, _, attr = name.rpartition(".")
    return getattr(m.get_submodule(module), attr)


def test_same_seed_same_init_draws_in_every_arm_where_shapes_match():
    """Same-shaped tensors are identical across arms with the same init scheme; under another
    scheme (olmo0424's mitchell) they are the same standard draws scaled by their own std."""
    cells = _cells(0)
    built = {arm: model.build(c.config.model, generator=init_generator(0)) for arm, c in cells.items()}
    base_std = expected_std(cells["olmo2"].config.model)
    for arm, m in built.items():
        std = expected_std(cells[arm].config.model)
        compared = 0
        for name, s in std.items():
            p, b = _tensor(m, name), _tensor(built["olmo2"], name)
            if name not in base_std or b.shape != p.shape:
                continue
            compared += 1
            if s == base_std[name]:
                assert torch.equal(p, b), (arm, name)
            else:
                torch.testing.assert_close(p / s, b / base_std[name], rtol=0, atol=1e-6)
        assert compared >= 4 * 7 + 2, arm  # every block's tensors, embedding and head
    other = model.build(cells["olmo2"].config.model, generator=init_generator(1))
    assert not torch.equal(other.embed.weight, built["olmo2"].embed.weight)


def test_same_seed_same_batches_in_every_arm():
    cells = _cells(1)
    firsts = {}
    for arm, c in cells.items():
        t = c.config.train
        data = build_data(c.config.data, vocab_size=c.config.model.vocab_size, seq_len=t.seq_len,
                          seed=derive_seeds(t.seed)["data"], progress=False)
        firsts[arm] = [data.train_batch(step, t.batch_size).input_ids for step in (0, 1, 57)]
    for arm, batches in firsts.items():
        for got, want in zip(batches, firsts["olmo2"]):
            assert torch.equal(got, want), arm
    seed0 = _cells(0)["olmo2"].config
    data0 = build_data(seed0.data, vocab_size=seed0.model.vocab_size, seq_len=seed0.train.seq_len,
                       seed=derive_seeds(0)["data"], progress=False)
    assert not torch.equal(data0.train_batch(0, seed0.train.batch_size).input_ids, firsts["olmo2"][0])
