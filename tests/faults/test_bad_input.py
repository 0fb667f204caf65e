"""Bad input through the real CLI (`python -m stability ...` in a fresh working directory): exit
status 2, exactly one line on stderr, starting with "error:" and naming the place, and nothing
created (no runs/, no mlflow.db, no mlartifacts/): only the inputs the case wrote are there.

The cases run as subprocesses four at a time (each is mostly Python start-up and imports)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.faults.helpers import cli

TINY = ("train", "--preset", "olmo2-tiny", "--no-progress")
GRID = ('name = "g"\npreset = "olmo2-tiny"\nseeds = [0]\n[budget]\nsteps = 2\n'
        '[arms.a]\n[arms.b]\nmodel.qk_norm = "none"\n')


def _token_files(d: Path) -> None:
    np.save(d / "wide.npy", np.arange(0, 70_000, 7, dtype=np.uint32))  # ids beyond vocab 1024
    np.save(d / "u16.npy", np.arange(1000, dtype=np.uint16))
    np.save(d / "float.npy", np.linspace(0, 1, 1000, dtype=np.float32))
    (d / "odd.bin").write_bytes(np.arange(1000, dtype=np.uint16).tobytes() + b"\x01")


# case: (files to write {name: text | callable}, argv, the stderr line (a prefix))
CASES = {
    "malformed_toml": ({"run.toml": "[optim\nlr = 1e-3\n"}, (*TINY, "--config", "run.toml"),
                       "error: --config: 'run.toml' is not valid TOML: Expected ']'"),
    "unknown_key_in_file": ({"run.toml": '[model]\nqk_normm = "none"\n'}, (*TINY, "--config", "run.toml"),
                            "error: model.qk_normm: unknown key (did you mean 'qk_norm'? allowed: "),
    "unknown_key_set": ({}, (*TINY, "--set", "optim.lrr=1e-3"),
                        "error: optim.lrr: unknown key (did you mean 'lr'? allowed: lr, betas, eps"),
    "wrong_type": ({}, (*TINY, "--set", "train.steps=1.5"),
                   "error: train.steps: expected an integer, got 1.5"),
    "negative_lr": ({}, (*TINY, "--set", "optim.lr=-1e-3"), "error: optim.lr: must be > 0, got -0.001"),
    "n_heads": ({}, (*TINY, "--set", "model.n_heads=5"),
                "error: model.n_heads: 5 does not divide d_model=128"),
    "xformers_cpu": ({}, (*TINY, "--set", "model.attention=xformers", "--set", "train.device=cpu"),
                     "error: model.attention: 'xformers' needs a CUDA device "
                     "(allowed on cpu: auto, sdpa, eager)"),
    "corpus_missing": ({}, (*TINY, "--set", "data.corpus=no_such.txt"),
                       "error: data.corpus: path 'no_such.txt' does not exist"),
    "corpus_empty_file": ({"empty.txt": ""}, (*TINY, "--set", "data.corpus=empty.txt"),
                          "error: data.corpus: 'empty.txt' holds no text"),
    "corpus_empty_folder": ({"texts/notes.bin.keep": ""}, (*TINY, "--set", "data.corpus=texts"),
                            "error: data.corpus: 'texts' holds no text"),
    "token_ids_beyond_vocab": ({"": _token_files}, (*TINY, "--set", "data.corpus=wide.npy"),
                               "error: data.corpus: token id 69993 >= model.vocab_size 1024"),
    "token_dtype_mismatch": ({"": _token_files}, (*TINY, "--set", "data.corpus=u16.npy",
                                                  "--set", "data.token_dtype=uint32"),
                             "error: data.token_dtype: file dtype uint16 does not match token_dtype uint32"),
    "token_dtype_float": ({"": _token_files}, (*TINY, "--set", "data.corpus=float.npy"),
                          "error: data.corpus: 'float.npy' has dtype float32 (allowed: uint16, uint32)"),
    "token_bin_size": ({"": _token_files}, (*TINY, "--set", "data.corpus=odd.bin", "--set",
                                            "data.token_dtype=uint16"),
                       "error: data.token_dtype: 'odd.bin' has 2001 bytes, not a multiple of 2 for uint16"),
    "grid_plan_no_baseline": ({"g.toml": GRID}, ("grid", "plan", "g.toml"),
                              "error: baseline: required, the arm that is the final recipe (arms: a, b)"),
    "grid_run_baseline_not_an_arm": ({"g.toml": 'baseline = "olmo2"\n' + GRID},
                                     ("grid", "run", "g.toml", "--no-progress"),
                                     "error: baseline: 'olmo2' is not an arm (arms: a, b)"),
    "reproduce_unknown_study": ({}, ("reproduce", "--only", "study_nope"),
                                "error: --only: study_nope not in (study_ngram, study_init, study_norm, "),
    "reproduce_scale": ({}, ("reproduce", "--scale", "tpu"),
                        "error: --scale: 'tpu' not in (cpu, quick, gpu)"),
    "reproduce_gpu_without_gpu": ({}, ("reproduce", "--scale", "gpu"),
                                  "error: --scale: 'gpu' needs GPUs and this machine shows none"),
}


def _prepare(d: Path, files: dict) -> list[str]:
    d.mkdir(parents=True)
    for name, content in files.items():
        if callable(content):
            content(d)
        else:
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(content)
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# One case per kind of mistake in the default suite; the rest with `-m slow` (each case is a
# Python start-up: about 2 s of CPU).
DEFAULT = ("malformed_toml", "unknown_key_in_file", "wrong_type", "negative_lr", "xformers_cpu",
           "corpus_empty_file", "token_ids_beyond_vocab", "grid_run_baseline_not_an_arm",
           "reproduce_unknown_study")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Runs a group of cases (default or slow) concurrently the first time one of them is asked."""
    cache: dict[str, tuple] = {}

    def run(case: str) -> tuple:
        if case not in cache:
            group = [c for c in CASES if (c in DEFAULT) == (case in DEFAULT)]
            root = tmp_path_factory.mktemp("bad_input")
            before = {c: _prepare(root / c, CASES[c][0]) for c in group}
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = {c: pool.submit(cli, *CASES[c][1], cwd=root / c, timeout=120) for c in group}
                for c, future in futures.items():
                    after = sorted(str(p.relative_to(root / c)) for p in (root / c).rglob("*"))
                    cache[c] = (future.result(), before[c], after)
        return cache[case]

    return run


@pytest.mark.parametrize("case", [c if c in DEFAULT else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(case, outcomes):
    result, before, after = outcomes(case)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(CASES[case][2]), lines
    assert after == before  # no runs/, no mlflow.db, no mlartifacts/: only the case's inputs
