"""End to end through the CLI: a short run on a user's tokenizer.json and a Parquet shard, both
made here from real text (stdlib sources), and the two one-line errors that create nothing."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from stability.config import load_config
from stability.data import build_data
from stability.data.corpus import load_corpus
from tests.data.helpers import encoded, stdlib_texts, write_parquet, write_tokenizer
from tests.faults.helpers import cli

STEPS = 4
EOS_ID = 1  # `<|endoftext|>` in the user's file; the locally trained BPE has it at 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The user's files: a 700-id tokenizer.json and one Parquet shard (id, text) of 40 docs."""
    root = tmp_path_factory.mktemp("user_inputs")
    texts = stdlib_texts(40)
    tok = write_tokenizer(root / "tokenizer.json", texts, 700, ["<|pad|>", "<|endoftext|>"])
    write_parquet(root / "shard.parquet", {"id": list(range(len(texts))), "text": texts},
                  row_group_size=8)
    return {"texts": texts, "tokenizer": tok, "tok_path": root / "tokenizer.json",
            "shard": root / "shard.parquet"}


def _args(inputs: dict, cwd: Path, *extra: str) -> list[str]:
    """`train` on the user's files, every output (MLflow, checkpoints, cache) inside `cwd`."""
    return ["train", "--preset", "olmo2-tiny", "--no-progress",
            "--tracking-uri", f"sqlite:///{cwd}/mlflow.db",
            "--set", f"data.corpus={inputs['shard']}", "--set", f"data.tokenizer={inputs['tok_path']}",
            "--set", f"data.cache_dir={cwd}/cache", "--set", f"train.steps={STEPS}",
            "--set", "train.threads=1", *extra]


CASES = {
    "run": (),
    "vocab_too_large": ("--set", "model.vocab_size=512"),
    "wrong_column": ("--set", "data.text_field=body"),
}


@pytest.fixture(scope="module")
def outcomes(inputs, tmp_path_factory) -> dict:
    """Each case's finished process and its folder's contents afterwards (run concurrently)."""
    root = tmp_path_factory.mktemp("cli")
    dirs = {name: root / name for name in CASES}
    for d in dirs.values():
        d.mkdir()
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        futures = {name: pool.submit(cli, *_args(inputs, dirs[name], *extra), cwd=dirs[name])
                   for name, extra in CASES.items()}
        done = {name: f.result() for name, f in futures.items()}
    return {name: (done[name], dirs[name], sorted(p.name for p in dirs[name].iterdir()))
            for name in CASES}


def test_run_trains_on_the_users_tokenizer_and_parquet(inputs, outcomes) -> None:
    result, cwd, _ = outcomes["run"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"status: finished after {STEPS} steps" in result.stdout
    assert f"tokens of parquet file {inputs['shard']}, column 'text'" in result.stderr

    # the stream the run trained on is the user's tokenizer's encoding, joined by its EOS
    cache = cwd / "cache"
    assert not list(cache.glob("tokenizer-*.json"))  # no BPE was trained
    (stored,) = cache.glob("tokens-file-*.npy")
    np.testing.assert_array_equal(np.load(stored),
                                  encoded(inputs["tokenizer"], inputs["texts"], EOS_ID))

    cfg = load_config("olmo2-tiny", overrides=[
        f"data.corpus={inputs['shard']}", f"data.tokenizer={inputs['tok_path']}",
        f"data.cache_dir={cache}"])
    data = build_data(cfg.data, vocab_size=cfg.model.vocab_size, seq_len=cfg.train.seq_len, seed=0)
    assert data.stats["cache_hit"] and data.eos_id == EOS_ID and data.vocab_used == 700

    uri = f"sqlite:///{cwd}/mlflow.db"
    (run,) = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert run.data.tags["status"] == "finished"
    assert run.data.params["data.tokenizer"] == str(inputs["tok_path"])
    assert run.data.tags["data_fingerprint"] == data.fingerprint
    assert data.fingerprint != load_corpus(cfg.data, cfg.model.vocab_size).fingerprint


@pytest.mark.parametrize("case, line", [
    ("vocab_too_large", r"error: data\.tokenizer: '.*tokenizer\.json' has 700 ids > "
                        r"model\.vocab_size 512 \(allowed: a tokenizer of at most 512 ids, "
                        r"or model\.vocab_size >= 700\)"),
    ("wrong_column", r"error: data\.text_field: no column 'body' in '.*shard\.parquet' "
                     r"\(allowed: text; columns: id int64, text string\)"),
])
def test_bad_tokenizer_or_column_is_one_line_exit_2_nothing_created(outcomes, case, line) -> None:
    result, _, after = outcomes[case]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and re.fullmatch(line, lines[0]), lines
    assert after == []  # no mlflow.db, no runs/, no cache
