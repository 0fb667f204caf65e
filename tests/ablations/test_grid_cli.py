"""`stability grid plan`: prints the cells of a bundled or file spec; bad specs exit 2."""

from __future__ import annotations

from stability.cli import main


def test_grid_plan_bundled(capsys):
    assert main(["grid", "plan", "quick"]) == 0
    out = capsys.readouterr().out
    assert out.count(" 0.03 ") == 10 and "total: 10 cells (5 arms x 2 seeds x 1 lr)" in out


def test_grid_plan_errors_exit_2(tmp_path, capsys):
    spec = tmp_path / "g.toml"
    spec.write_text('name = "g"\nbaseline = "a"\nseeds = [0]\n[arms.a]\nmodel.qk_normm = "none"\n')
    assert main(["grid", "plan", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: arms.a.model.qk_normm: unknown key") and "\n" not in err
