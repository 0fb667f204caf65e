"""The grid display off a terminal (a log, a pipe, CI): one line per cell, no bar, no lines of
whitespace or carriage returns from a bar being cleared and redrawn."""

from __future__ import annotations

from ablations.progress import GridProgress
from ablations.spec import load_spec


def test_off_a_terminal_the_display_is_the_cell_lines_alone(capsys):
    cells = load_spec("quick", []).cells()[:3]
    display = GridProgress("quick", cells, {}, jobs=2, threads=1)
    for cell in cells:
        display.started(cell)
    display.update({cells[0].cell_id: {"step": 10, "tokens_per_s": 100.0}})
    display.ended(cells[0], "finished", {"eval_loss": 3.2})
    display.ended(cells[1], "interrupted", {"steps": 13, "signal": "SIGTERM"})
    display.ended(cells[2], "diverged", {"diverged_at_step": 7})
    display.close()
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "grid quick: 3 cells, 0 already done, 3 to run; 2 worker(s) x 1 thread(s)",
        f"  finished {cells[0].arm} seed {cells[0].seed} lr 0.03 eval loss 3.200",
        f"  interrupted {cells[1].arm} seed {cells[1].seed} lr 0.03 at step 13 by SIGTERM; a rerun "
        "resumes it",
        f"  diverged {cells[2].arm} seed {cells[2].seed} lr 0.03 at step 7"]
