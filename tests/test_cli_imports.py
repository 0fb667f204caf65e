"""`stability --help` names every subcommand with its one-line description, and neither it nor any
subcommand's `--help` imports torch (a fresh interpreter each, so nothing is preloaded)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stability.cli import command_names

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import contextlib, io, json, sys
from stability.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(json.dumps({"torch": "torch" in sys.modules, "help": out.getvalue()}))
"""


def _help(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_names_every_subcommand_and_imports_no_torch():
    got = _help("--help")
    assert not got["torch"]
    text = got["help"]
    names = command_names()
    assert set(names) == {"train", "config", "presets", "probe-init", "grid", "report",
                             "dashboard", "tracking", "reproduce"}
    description = text.split("\n\n")[1]  # usage, then the description
    for name in names:
        assert name in description, name
        # listed with its one-line help (argparse puts a long name's help on the next line)
        assert re.search(rf"^    {re.escape(name)}(  +\S|\n {{8,}}\S)", text, re.M), (name, text)


@pytest.mark.parametrize("argv", [["train", "--help"], ["grid", "--help"], ["grid", "run", "--help"],
                                  ["report", "--help"], ["tracking", "replay", "--help"]])
def test_subcommand_help_imports_no_torch(argv):
    got = _help(*argv)
    assert got["help"].startswith("usage: stability") and not got["torch"], argv


@pytest.mark.parametrize("argv", [["config", "--preset", "olmo2-small"], ["presets"],
                                  ["grid", "plan", "quick"], ["grid", "plan", "olmo2_section3"],
                                  ["reproduce", "--plan"], ["reproduce", "--plan", "--scale", "gpu"]])
def test_commands_that_need_no_model_import_no_torch(argv):
    got = _help(*argv)
    assert got["help"].strip() and not got["torch"], argv
