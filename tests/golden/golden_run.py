"""A fixed 30-step run whose every logged metric (key, step, value) is pinned in `golden_run.json`.

The golden file guards refactors that must not change behaviour: any change to what is logged,
when, or any value's bits fails `test_golden_run.py`. Regenerate it only for an intended change:

    python -m tests.golden.golden_run --write

Values are compared to the bit on the platform that wrote the file (torch version and CPU kernel
capability recorded in it); elsewhere, where kernels round differently, to 1e-5 relative.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path

import torch

from stability.config import load_config
from stability.train import Trainer

GOLDEN = Path(__file__).with_name("golden_run.json")
# Every probe family fires several times: per-step rows, probe rows every 5, attention every 10,
# eval at 15 and the end, a checkpoint mid-run, skip-step on.
OVERRIDES = ("train.steps=30", "train.log_every=5", "train.eval_every=15", "train.eval_batches=2",
             "train.checkpoint_every=10", "train.threads=1", "data.max_bytes=300000",
             "probes.every=5", "probes.attn_every=10", "optim.skip_step=true",
             "optim.skip_step_window=8", "probes.online_window=8", "probes.olmo_core_window=8")
WALL_CLOCK = ("train/tokens_per_s", "train/mfu")  # timings: not part of the trajectory


def cpu_model() -> str:
    """The CPU's model name: machines with the same vector extensions (AVX512 on Intel and AMD)
    still round matrix products differently."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as host

    return host.processor() or host.machine()


def platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model()}


def run_metrics(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Train the fixed run in `workdir` and read back every metric point from its store."""
    db = workdir / "mlflow.db"
    cfg = load_config("olmo2-tiny", overrides=[
        *OVERRIDES, f'tracking.uri="sqlite:///{db}"', f'train.checkpoint_dir="{workdir}/ckpt"'])
    torch.set_num_threads(1)
    result = Trainer(cfg, progress=False).run()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, step, value FROM metrics WHERE run_uuid = ?",
                           (result.run_id,)).fetchall()
    out: dict[str, list[tuple[int, float]]] = {}
    for key, step, value in sorted(rows):
        if key not in WALL_CLOCK:
            out.setdefault(key, []).append((int(step), float(value)))
    return out


def write(path: Path = GOLDEN) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_metrics(Path(tmp))
    doc = {"platform": platform(), "overrides": list(OVERRIDES),
           "metrics": {k: [[s, v.hex()] for s, v in pts] for k, pts in metrics.items()}}
    path.write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
    print(f"wrote {path}: {len(metrics)} keys, {sum(map(len, metrics.values()))} points")


def load(path: Path = GOLDEN) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]]:
    doc = json.loads(path.read_text())
    metrics = {k: [(int(s), float.fromhex(v)) for s, v in pts] for k, pts in doc["metrics"].items()}
    return doc["platform"], metrics


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate golden_run.json")
    if ap.parse_args().write:
        write()
