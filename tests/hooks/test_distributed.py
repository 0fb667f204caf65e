"""The plain-loop monitor under data parallelism (2 gloo ranks on CPU): with DDP and with FSDP2
the logged loss, global and per-layer gradient norms and the per-layer parameter and update
statistics equal a single process training on the whole batch, and only rank 0 logs.

A tiny HF Llama from a config, 3 steps of 4 rows (2 per rank), AdamW at eps 1e-6 (see
tests/distributed/test_fsdp_gloo.py: summation order moves gradients by ~1e-7 relative, which
the default eps would turn into update differences on rare embedding rows).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist

from tests.hooks.helpers import VOCAB, history, llama

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

STEPS, ROWS, SEQ, WORLD = 3, 4, 32, 2
REL = 2e-5
COMPARED = ("train/loss", "grad/norm", "grad/norm/layer_0", "grad/norm/layer_2", "grad/norm/embed",
            "update/rms/layer_1", "param/norm/layer_1", "act/rms/layer_2")


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(2, VOCAB, (ROWS, SEQ), generator=g) for _ in range(STEPS)]


def train(model: torch.nn.Module, rows: slice, uri: str, out: str, logged: torch.nn.Module) -> None:
    """The user's loop: forward on this rank's rows, backward, the monitor's two calls."""
    from stability.hooks import StabilityMonitor

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
    with StabilityMonitor(logged, opt, tracking_uri=uri, experiment="dp", run_name="r", output_dir=out,
                          log_every=1, every=1, attn_every=1000) as monitor:
        for ids in batches():
            loss = model(input_ids=ids[rows], labels=ids[rows]).loss
            loss.backward()
            monitor.after_backward(loss)
            opt.step()
            monitor.after_step()
            opt.zero_grad()


KINDS = ("ddp", "fsdp2")


def _rank(rank: int, port: int, root: str) -> None:
    """A spawned rank: both kinds one after the other (one spawn: the imports cost most)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        per = ROWS // WORLD
        rows = slice(rank * per, (rank + 1) * per)
        for kind in KINDS:
            torch.manual_seed(0)
            model = llama()
            uri, out = f"sqlite:///{root}/{kind}.db", f"{root}/{kind}"
            if kind == "ddp":
                from torch.nn.parallel import DistributedDataParallel

                wrapped = DistributedDataParallel(model)
                train(wrapped, rows, uri, out, wrapped)
            else:
                from torch.distributed.fsdp import fully_shard

                for layer in model.model.layers:
                    fully_shard(layer)
                fully_shard(model)
                train(model, rows, uri, out, model)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged(uri: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("dp").experiment_id])
    assert len(runs) == 1  # rank 0 only
    return history(uri, runs[0].info.run_id)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("single")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    torch.manual_seed(0)
    model = llama()
    train(model, slice(0, ROWS), uri, str(d / "out"), model)
    return logged(uri)


@pytest.fixture(scope="module")
def parallel(tmp_path_factory) -> str:
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("parallel")
    mp.spawn(_rank, args=(free_port(), str(root)), nprocs=WORLD, join=True)
    return str(root)


@pytest.mark.parametrize("kind", KINDS)
def test_data_parallel_monitor_logs_the_single_process_values_once(kind, single, parallel) -> None:
    got = logged(f"sqlite:///{parallel}/{kind}.db")
    for key in COMPARED:
        want = single[key]
        assert [s for s, _ in got[key]] == [s for s, _ in want] == list(range(STEPS)), key
        for (step, a), (_, b) in zip(got[key], want):
            assert a == pytest.approx(b, rel=REL), (kind, key, step)
