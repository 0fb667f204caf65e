"""`stability reproduce`: its plan (scales, names, cost) without running, and one study run end
to end through the real CLI (slow), rerun to show it resumes."""

from __future__ import annotations

import csv

import pytest

from studies.catalog import STUDIES
from studies.reproduce import make_plan, study_spec
from tests.faults.helpers import cli


def test_plan_scales_name_their_experiments_apart_and_count_cells():
    cpu, quick, gpu = make_plan("cpu"), make_plan("quick"), make_plan("gpu")
    assert [p.spec.name for p in cpu.studies] == [s.name for s in STUDIES]
    assert all(p.spec.name == f"{p.study.name}_quick" for p in quick.studies)
    for plan in (cpu, quick, gpu):
        for p in plan.studies:
            lrs = len(p.spec.lrs) if p.spec.lrs else 1
            assert p.cells == len(p.spec.arms) * len(p.spec.seeds) * lrs == len(p.spec.cells())
    assert all(p.spec.budget["steps"] == 120 and len(p.spec.seeds) == 3 for p in quick.studies)
    assert {p.spec.preset for p in gpu.studies} == {"olmo2-190M"}
    assert all(p.spec.gpus == 1 for p in gpu.studies)
    lr = next(p for p in quick.studies if p.spec.lrs)
    assert lr.spec.lrs == [3e-3, 3e-2, 3e-1]
    assert quick.seconds(2) < cpu.seconds(2) < cpu.seconds(1)


def test_extra_overrides_reach_every_study():
    spec = study_spec(STUDIES[0], "cpu", ("budget.steps=40", 'preset="olmo2-tiny"'))
    assert spec.budget["steps"] == 40 and spec.preset == "olmo2-tiny"


@pytest.mark.slow
def test_one_study_end_to_end_then_resumed(tmp_path):
    argv = ("reproduce", "--only", "study_eps", "--scale", "quick", "--set", 'preset="olmo2-tiny"',
            "--set", "budget.steps=40", "--jobs", "2", "--no-progress", "--bootstrap", "200")
    first = cli(*argv, cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "study_eps_quick" in first.stdout and "6 finished" in first.stdout and "6 to run" in first.stdout
    out = tmp_path / "results" / "reproduce_quick"
    rows = list(csv.DictReader((out / "findings.csv").open()))
    eps = next(s for s in STUDIES if s.name == "study_eps")
    assert [r["arm"] for r in rows] == [f.arm for f in eps.findings]
    assert all(int(r["n_pairs"]) == 3 for r in rows if r["measure"] != "largest grad norm / median of "
                                                                         "the 100 steps before")
    summary = (out / "summary.md").read_text()
    assert "## Findings" in summary and "same direction?" in summary
    assert (out / "study_eps_quick" / "summary.md").is_file()
    assert (out / "study_eps_quick" / "figures" / "update_rms_and_eps.png").is_file()
    assert "](study_eps_quick/figures/update_rms_and_eps.png)" in summary
    again = cli(*argv, cwd=tmp_path, timeout=900)
    assert again.returncode == 0 and "6 finished" in again.stdout, again.stderr[-3000:]
    assert "6 cells, 0 to run" in again.stdout and "grids already done" in (out / "summary.md").read_text()
