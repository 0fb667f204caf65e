"""Every figure a report makes, rendered from a synthetic grid at both widths, read like a reader
would: no raw metric key or frame column anywhere in its text, a legend wherever it draws more
than one series, one colour per arm across all of them, the paper sizes, vector PDF text."""

from __future__ import annotations

import re
import warnings

import matplotlib.colors as mcolors
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from reports import figures as R
from reports import frames as F
from reports import style as S
from reports.figures_leadlag import leadlag_figure
from reports.lr_sensitivity import lr_sensitivity
from reports.stats import COMPARE_COLUMNS, compare_arms
from stability import metric_names as M
from tests.reports.factories import synthetic_grid

WIDTHS = {"single": 3.5, "double": 7.2}
# the data artists of the figure modules (gid "kind|series..."): one series per distinct rest
SERIES_KINDS = ("mean", "attn_mean", "diff", "bar", "layer", "points")
# raw names a reader must never see: metric keys (`train/loss`, `grad/norm/layer_3`) and the
# frames' column names with an underscore (`final_eval_loss`, `mean_diff`)
RAW_KEY = re.compile(r"(?<![\w\\])[a-z][a-z0-9_]*(?:/[A-Za-z0-9_]+)+")
NAMES = (*F.RUN_COLUMNS, *COMPARE_COLUMNS, "lambda_act", "lambda_grad", "optimal_lr", "best_loss",
         "sensitivity_sd")
COLUMNS = sorted({c for c in NAMES if "_" in c}, key=len, reverse=True)
RAW_COLUMN = re.compile(r"\b(" + "|".join(map(re.escape, COLUMNS)) + r")\b")


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], Figure]:
    """{(figure name, width): figure} of every figure kind, drawn (tick labels exist)."""
    grid = synthetic_grid(lrs=(1e-3, 1e-2), seeds=(0, 1, 2), steps=80,
                          diverged={("olmo0424", 1, 1e-2): 60},
                          spike_steps={("olmo0424", 0, 1e-2): [40], ("olmo2", 2, 1e-3): [30]},
                          loss_spike_steps={("olmo2", 0, 1e-3): [50], ("no_qk_norm", 1, 1e-2): [55]})
    compare = compare_arms(grid, n_boot=200)
    probe = pd.DataFrame({"init": ["normal"] * 3 + ["mitchell"] * 3, "d_model": [64, 128, 256] * 2,
                          "seed": 0, "growth_act": [0.0, 0.01, 0.0, 0.2, 0.3, 0.4],
                          "growth_grad": [0.0, -0.01, 0.0, -0.2, -0.3, -0.4]})
    skipped: dict[str, str] = {}
    jobs = R.figure_jobs(grid, compare, lr_sensitivity(grid, n_boot=200), growth_df=probe, skipped=skipped)
    jobs.append(("leadlag", lambda w: leadlag_figure(grid, width=w)))  # the report's lead-lag section
    out = {}
    for name, make in jobs:
        for width in WIDTHS:
            try:
                fig = make(width)
            except R.MissingData:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # e.g. a layout whose axes collapsed
                fig.canvas.draw()
            out[(name, width)] = fig
    out[("colors", "")] = S.arm_colors(grid.arms, grid.baseline)
    return out


def figures(rendered) -> dict[tuple[str, str], Figure]:
    return {k: v for k, v in rendered.items() if k != ("colors", "")}


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def series(fig: Figure) -> set[str]:
    gids = [a.get_gid() for a in fig.findobj(lambda a: isinstance(a.get_gid(), str))]
    return {g.split("|", 1)[1] for g in gids if g.split("|", 1)[0] in SERIES_KINDS}


def test_every_report_figure_kind_is_rendered(rendered):
    names = {name for name, _ in figures(rendered)}
    assert {"loss_curves", "grad_norm_curves", "attn_logit_curves", "attn_logit_layers", "log_z_curves",
            "embedding_norm_curves", "update_rms_and_eps", "lr_sensitivity", "spike_scores",
            "growth_vs_width_probe", "layer_grad_heatmap_baseline", "forest_headline", "leadlag",
            f"forest_{F.FINAL_EVAL_LOSS}", f"forest_{F.MAX_ATTN_LOGIT}"} <= names
    assert len(figures(rendered)) == 2 * len(names)  # each at both widths


def test_no_figure_shows_a_raw_metric_key_or_column_name(rendered):
    assert RAW_KEY.search("grad/norm/layer_3 spiked") and RAW_COLUMN.search("final_eval_loss: +0.1")
    assert not RAW_KEY.search("Gradient L2 norm") and not RAW_COLUMN.search("no_qk_norm, n=3")
    for key, fig in figures(rendered).items():
        shown = texts(fig)
        assert shown, key
        for text in shown:
            assert not RAW_KEY.search(text), (key, text)
            assert not RAW_COLUMN.search(text), (key, text)


def test_every_figure_with_several_series_has_one_legend(rendered):
    for key, fig in figures(rendered).items():
        if len(series(fig)) <= 1:
            continue
        colorbar = [ax for ax in fig.axes
                    if ax.get_label() == "<colorbar>" and ax.get_xlabel() == S.LAYER_LABEL]
        assert len(fig.legends) == 1 or colorbar, key
        assert not any(ax.get_legend() for ax in fig.axes), key  # one per figure, not one per panel
        if fig.legends:
            assert [t.get_text() for t in fig.legends[0].get_texts()], key
            # below the panels, outside the data
            legend_top = fig.legends[0].get_window_extent().y1
            assert all(legend_top <= ax.get_window_extent().y0 + 1 for ax in fig.axes), key


def test_sizes_are_a_paper_column_and_text_width(rendered):
    for (name, width), fig in figures(rendered).items():
        assert fig.get_figwidth() == pytest.approx(WIDTHS[width]), name
        assert fig.get_figheight() < 10.0, name  # fits a page


def test_one_colour_per_arm_across_every_figure(rendered):
    colors = rendered[("colors", "")]
    assert colors["olmo2"] == S.BASELINE_COLOR
    seen: dict[str, set[str]] = {}
    for (name, _), fig in figures(rendered).items():
        if name.startswith(("growth", "attn_logit_layers", "layer_grad")):
            continue  # colour by init or by layer, not by arm
        for artist in fig.findobj(lambda a: isinstance(a.get_gid(), str)):
            kind, _, rest = artist.get_gid().partition("|")
            arm = rest.split("|")[0]
            if kind in ("mean", "diff", "bar", "attn_mean") and arm in colors:
                color = artist.get_color() if hasattr(artist, "get_color") else artist.get_facecolor()
                seen.setdefault(arm, set()).add(mcolors.to_hex(color))
    assert set(seen) == set(colors)
    for arm, hexes in seen.items():
        assert hexes == {colors[arm].lower()}, (arm, hexes)


def test_pdf_is_vector_with_embedded_text(rendered, tmp_path):
    fig = rendered[("loss_curves", "double")]
    png, pdf = R.save_figure(fig, tmp_path, "loss_curves")
    data = pdf.read_bytes()
    assert b"/FontFile2" in data  # TrueType fonts embedded: text stays text
    assert b"/Subtype /Image" not in data  # curves are paths, not pixels
    assert png.read_bytes()[:4] == b"\x89PNG"
    heat = rendered[("layer_grad_heatmap_baseline", "single")]
    (path,) = R.save_figure(heat, tmp_path, "heat", formats=("pdf",))
    assert b"/FontFile2" in path.read_bytes()  # only the mesh is rasterised


def test_figure_text_uses_registry_names_for_other_metrics():
    g = synthetic_grid(seeds=(0,), steps=30)
    fig = R.metric_curves(g, M.TRAIN_LR)
    fig.canvas.draw()
    assert fig.axes[0].get_ylabel() == "Learning rate"
    assert not any(RAW_KEY.search(t) for t in texts(fig))
