"""Data parallel (FSDP2 over gloo, CPU) against a single process: same losses, per-layer grad norms,
probes and final weights; sharded checkpoints that resume on another number of ranks.

Runs: a single-process reference (in process), a 2-rank run (`torch.multiprocessing.spawn`), a
2 -> 1 resume (in process, from the 2-rank run's step-2 DCP checkpoint) and a 1 -> 2 resume
(`python -m torch.distributed.run ... -m stability train --resume`, from the reference's step-2
`.pt`). About 25 s on an idle 2-core machine.

`optim.eps=1e-6`: data parallelism sums each gradient in another order (per rank, then across
ranks), which moves gradients by ~1e-7 relative. Entries whose gradient is ~1e-8 (rare tokens'
embedding rows) are in Adam's eps regime at the default eps 1e-8, where update = g / (|g| + eps)
turns that rounding into update differences (measured: 3.8e-5 on 2 of 1.1M weights after 4
steps). A larger eps keeps the comparison about sharding, not about Adam's conditioning.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from stability import metric_names as M
from stability.cli import main
from stability.config import load_config
from stability.dense import IDENTITY, read_dense
from stability.dist_checkpoint import find_latest, read_sharded_weights
from stability.distributed import check_global_batch, rows_of

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
COMMON = ("train.steps=4", "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3",
          "train.threads=1", "data.max_bytes=300000", "optim.eps=1e-6", "tracking.enabled=false",
          "optim.skip_step=true", "optim.skip_step_window=6")


def _overrides(ckpt: Path) -> list[str]:
    return [*COMMON, f'train.checkpoint_dir="{ckpt}"']


def _train(ckpt: Path, resume: bool = False, poison_step: int | None = None) -> list[tuple]:
    """One run of the trainer in this process; (step, loss, grad norm) per read-out, then
    ("result", status, diverged_at_step). `poison_step`: NaN features at that training step."""
    from stability.callbacks import OnReadOut
    from stability.train import Trainer

    trainer = Trainer(load_config("olmo2-tiny", overrides=_overrides(ckpt)), resume=resume,
                      progress=False)
    rows: list[tuple] = []
    trainer.callbacks.append(OnReadOut(lambda step, last: rows.append((step, last[M.TRAIN_LOSS],
                                                                       last[M.GRAD_NORM]))))
    if poison_step is not None:
        features, calls = trainer.model.features, []

        def poisoned(*args, **kwargs):
            out = features(*args, **kwargs)
            if torch.is_grad_enabled() and trainer.model.training:
                calls.append(1)
                if len(calls) == poison_step + 1:
                    return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")
            return out

        trainer.model.features = poisoned
    result = trainer.run()
    return [*rows, ("result", result.status, result.diverged_at_step)]


def _rank(rank: int, world: int, port: int, ckpt: str, out: str, poison: dict | None = None) -> None:
    """A spawned rank: the torchrun environment, then the same `Trainer` run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rows = _train(Path(ckpt), poison_step=(poison or {}).get(rank))
    torch.save(rows, Path(out) / f"rows{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference and the 2-rank run of the same config."""
    tmp = tmp_path_factory.mktemp("dp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _train(tmp / "single")
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp / "dp2"), str(tmp)), nprocs=2)
    dp = [torch.load(tmp / f"rows{r}.pt") for r in (0, 1)]
    for rows in (single, *dp):
        assert rows.pop() == ("result", "finished", None) and rows[-1][0] == 4
    return {"tmp": tmp, "single": single, "dp": dp}


def _final_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    found = find_latest(ckpt)
    assert found is not None and found.path.name.startswith("step_00000004")
    return (read_sharded_weights(found.path) if found.sharded else found.state)["model"]


def test_two_ranks_match_one_process(runs):
    single, (rank0, rank1) = runs["single"], runs["dp"]
    assert rank0 == rank1  # every rank reads out the same (all-reduced) values: same decisions
    assert [s for s, *_ in rank0] == [s for s, *_ in single] == [1, 2, 3, 4]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(single, rank0):
        assert abs(loss_a - loss_b) < TOL and abs(norm_a - norm_b) < TOL

    a, b = read_dense(runs["tmp"] / "single" / "dense"), read_dense(runs["tmp"] / "dp2" / "dense")
    merged = a.merge(b, on=IDENTITY, how="outer", suffixes=("_1", "_2"))
    assert len(merged) == len(a) == len(b) and not merged.isna().any().any()
    diff = (merged["value_1"] - merged["value_2"]).abs()
    grads = merged["key"].str.startswith("grad/")  # per-layer grad norms / RMS of every step
    assert set(merged.loc[grads, "step"]) == {0, 1, 2, 3}
    assert diff[grads].max() < TOL
    # every probe (activations, params, updates, attention at step 0): same to float rounding
    assert (diff <= 1e-4 * merged["value_1"].abs().clip(lower=1.0)).all()

    assert _max_diff(_final_weights(runs["tmp"] / "single"), _final_weights(runs["tmp"] / "dp2")) < TOL


def test_resume_two_ranks_on_one(runs):
    """2 -> 1: the 2-rank run's step-2 DCP checkpoint into a plain single-process run."""
    ckpt = runs["tmp"] / "resume21"
    ckpt.mkdir()
    shutil.copytree(runs["tmp"] / "dp2" / "step_00000002.dcp", ckpt / "step_00000002.dcp")
    # half-written later checkpoints are never "latest": a temp dir, a dir without its marker
    shutil.copytree(ckpt / "step_00000002.dcp", ckpt / ".step_00000003.dcp.tmp")
    shutil.copytree(ckpt / "step_00000002.dcp", ckpt / "step_00000003.dcp")
    (ckpt / "step_00000003.dcp" / "complete.json").unlink()
    assert find_latest(ckpt).path.name == "step_00000002.dcp"

    rows = _train(ckpt, resume=True)
    assert rows.pop() == ("result", "finished", None) and [s for s, *_ in rows] == [3, 4]
    assert _max_diff(_final_weights(runs["tmp"] / "single"), _final_weights(ckpt)) < TOL
    assert abs(rows[-1][1] - runs["single"][-1][1]) < TOL


def test_resume_one_rank_on_two_with_torchrun(runs):
    """1 -> 2: the single-process run's step-2 `.pt` into `torchrun -m stability train --resume`."""
    ckpt = runs["tmp"] / "resume12"
    ckpt.mkdir()
    for name in ("step_00000002.pt", "step_00000002.pt.sha256"):
        shutil.copy(runs["tmp"] / "single" / name, ckpt / name)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "stability", "train", "--preset", "olmo2-tiny",
           "--resume", "--no-progress"]
    for override in _overrides(ckpt):
        cmd += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=runs["tmp"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "status: finished after 4 steps" in proc.stdout
    found = find_latest(ckpt)
    assert found.sharded and (found.path / ".metadata").is_file()
    assert _max_diff(_final_weights(runs["tmp"] / "single"), _final_weights(ckpt)) < TOL


def test_global_batch_must_split_evenly(tmp_path, monkeypatch, capsys):
    assert [rows_of(8, r, 2) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    check_global_batch(8, 4)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    rc = main(["train", "--preset", "olmo2-tiny", "--set", "tracking.enabled=false",
               "--set", f'train.checkpoint_dir="{tmp_path}"', "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.batch_size" in err[0] and "3" in err[0]
    assert not dist.is_initialized()


@pytest.mark.slow
def test_nan_on_one_rank_diverges_every_rank_at_its_step(tmp_path):
    """A non-finite loss on rank 1 only: the all-reduced read-outs stop both ranks at step 1."""
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp_path / "ckpt"), str(tmp_path),
                                             {1: 1}), nprocs=2)
    rows = [torch.load(tmp_path / f"rows{r}.pt") for r in (0, 1)]
    assert rows[0] == [(1, rows[0][0][1], rows[0][0][2]), ("result", "diverged", 1)]
    assert rows[1][-1] == ("result", "diverged", 1) and rows[0][0] == rows[1][0]
