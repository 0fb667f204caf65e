"""Checkpoints: atomic, verified, falling back to the previous good one, weights_only."""

from __future__ import annotations

import pickle

import pytest
import torch

from stability.checkpoint import list_checkpoints, load_latest, save_checkpoint


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((3,), float(step)), "nested": {"a": [1, 2]}}


def test_round_trip_and_pruning(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt", "step_00000030.pt"]
    state = load_latest(tmp_path)
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((3,), 30.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_falls_back(tmp_path, damage, capsys):
    save_checkpoint(tmp_path, 1, _state(1))
    path = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    assert load_latest(tmp_path)["step"] == 1
    assert "skipping checkpoint" in capsys.readouterr().err


def test_empty_dir_is_none(tmp_path):
    assert load_latest(tmp_path / "missing") is None


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_untrusted_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "ck", 1, _state(1))
    path = tmp_path / "ck" / "step_00000002.pt"
    torch.save({"x": _Evil()}, path)  # a hostile file ...
    import hashlib
    import json

    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # ... with a matching checksum
    path.with_suffix(".pt.sha256").write_text(json.dumps({"sha256": digest,
                                                          "bytes": path.stat().st_size}))
    with pytest.raises(pickle.UnpicklingError):
        load_latest(tmp_path / "ck")
    assert not (tmp_path / "PWNED").exists()


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_save(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    stale = tmp_path / ".step_00000002.pt.tmp999999999"  # kill -9 mid-write, another pid
    stale.write_bytes(b"partial")
    (tmp_path / ".step_00000002.pt.sha256.tmp999999999").write_bytes(b"{")
    (tmp_path / ".latest.json.tmp999999999").write_bytes(b"{")
    assert load_latest(tmp_path)["step"] == 1  # ignored by the loader
    save_checkpoint(tmp_path, 2, _state(2))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert load_latest(tmp_path)["step"] == 2
