"""Report figures on the synthetic grid: the plotted content, not just that nothing crashes."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats as sps

from reports import figures as R
from reports import frames as F
from reports import style as S
from reports.stats import compare_arms
from stability import metric_names as M
from tests.reports.factories import synthetic_grid

LRS = (1e-3, 1e-2, 1e-1)
DIV = ("olmo0424", 1, 1e-1)
DIV_STEP = 120
SPIKES = {("olmo0424", 0, 1e-2): [80, 150], ("olmo2", 2, 1e-2): [100]}
ARMS = ("olmo2", "no_qk_norm", "olmo0424")


@pytest.fixture(scope="module")
def grid() -> F.GridData:
    return synthetic_grid(lrs=LRS, diverged={DIV: DIV_STEP}, spike_steps=SPIKES)


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    """Figures never go through pyplot: nothing is left open in its registry."""
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def gid_objs(fig: Figure, prefix: str) -> list:
    return [a for a in fig.findobj(lambda a: isinstance(a.get_gid(), str)) if a.get_gid().startswith(prefix)]


def one(fig: Figure, gid: str):
    objs = [a for a in fig.findobj(lambda a: a.get_gid() == gid)]
    assert len(objs) == 1, (gid, len(objs))
    return objs[0]


def run_id(grid, arm, seed, lr) -> str:
    r = grid.runs
    return r.loc[(r[F.ARM] == arm) & (r[F.SEED] == seed) & np.isclose(r[F.LR], lr), F.RUN_ID].item()


def assert_axes_labelled(fig: Figure) -> None:
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel()
            continue
        assert ax.get_xlabel().strip(), ax
        assert ax.get_ylabel().strip(), ax


def compare_frame() -> pd.DataFrame:
    nan = float("nan")
    rows = [
        ("no_qk_norm", F.FINAL_EVAL_LOSS, 3, 0.05, 0.04, 0.01, 0.09, 0.01, 0.02, 0.99, ""),
        ("olmo0424", F.FINAL_EVAL_LOSS, 2, 0.30, 0.30, nan, nan, nan, nan, nan, "n=2: too few seeds"),
        ("no_qk_norm", F.SPIKE_SCORE_GRAD_NORM, 3, 0.0, 0.0, -0.2, 0.1, 0.9, 1.0, 0.5, ""),
        ("olmo0424", F.SPIKE_SCORE_GRAD_NORM, 3, 0.17, 0.0, -0.1, 0.6, 0.3, 0.4, 0.2, ""),
    ]
    return pd.DataFrame(rows, columns=["arm", "metric", "n_pairs", "mean_diff", "median_diff", "ci_low",
                                       "ci_high", "p_value", "p_holm", "p_improve", "note"])


# ---------------------------------------------------------------- style


def test_arm_colors_stable_baseline_dark_and_distinct():
    c1 = S.arm_colors(["olmo2", "no_qk_norm", "olmo0424"], baseline="olmo2")
    c2 = S.arm_colors(["olmo0424", "olmo2", "no_qk_norm"], baseline="olmo2")
    assert c1 == c2 and c1["olmo2"] == S.BASELINE_COLOR
    many = [f"arm{i}" for i in range(9)]
    colors = S.arm_colors(many + ["base"], baseline="base")
    assert len(set(colors[a] for a in many)) == 9 and S.BASELINE_COLOR not in [colors[a] for a in many]
    assert S.axis_label(M.GRAD_NORM) == "grad L2 norm" and S.axis_label("step") == "step"
    assert "attention logit" in S.axis_label(M.ATTN_LOGIT_MAX)


# ---------------------------------------------------------------- curves over steps


def test_loss_curves_lines_spikes_and_divergence(grid):
    fig = R.loss_curves(grid)
    assert fig.skipped == {}
    for arm in ARMS:
        means = gid_objs(fig, f"mean|{arm}|")
        assert sorted(m.get_gid().split("|")[2] for m in means) == sorted(f"{lr:g}" for lr in LRS)
        assert len(gid_objs(fig, f"band|{arm}|")) == 3
    # seed mean of the baseline at lr 1e-2 is the mean of its three runs' losses
    loss = grid.metric(M.TRAIN_LOSS)
    ids = [run_id(grid, "olmo2", s, 1e-2) for s in (0, 1, 2)]
    expect = loss[loss[F.RUN_ID].isin(ids)].groupby("step")["value"].mean()
    line = one(fig, "mean|olmo2|0.01")
    np.testing.assert_allclose(line.get_ydata(), expect.to_numpy())
    # spikes: x at the spike steps, y on the run's own loss
    sp = one(fig, "spikes|olmo0424|0.01")
    assert list(sp.get_xdata()) == [80, 150]
    rid = run_id(grid, "olmo0424", 0, 1e-2)
    own = loss[loss[F.RUN_ID] == rid].set_index("step")["value"]
    np.testing.assert_allclose(sp.get_ydata(), own.loc[[80, 150]].to_numpy())
    assert list(one(fig, "spikes|olmo2|0.01").get_xdata()) == [100]
    assert not gid_objs(fig, "spikes|no_qk_norm")
    # the diverged run: an x at (diverged_at_step, its last finite loss)
    div = one(fig, "diverged|olmo0424|0.1")
    drid = run_id(grid, *DIV)
    dl = loss[loss[F.RUN_ID] == drid].set_index("step")["value"]
    assert np.isnan(dl.loc[DIV_STEP])
    assert list(div.get_xdata()) == [DIV_STEP] and div.get_marker() == S.DIVERGED_MARKER
    np.testing.assert_allclose(div.get_ydata(), [dl.loc[DIV_STEP - 1]])
    assert len(gid_objs(fig, "diverged|")) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "diverged" in labels and "spike" in labels
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    assert_axes_labelled(fig)


def test_loss_curves_options(grid):
    fig = R.loss_curves(grid, smooth=10, lr=1e-2, logy=True, band="sd")
    assert fig.axes[0].get_yscale() == "log"
    for arm in ARMS:
        assert [m.get_gid() for m in gid_objs(fig, f"mean|{arm}|")] == [f"mean|{arm}|0.01"]
    # smoothing: a trailing 10-point mean per run before averaging over seeds
    loss = grid.metric(M.TRAIN_LOSS)
    ids = [run_id(grid, "no_qk_norm", s, 1e-2) for s in (0, 1, 2)]
    sm = [loss[loss[F.RUN_ID] == r].set_index("step")["value"].rolling(10, min_periods=1).mean() for r in ids]
    np.testing.assert_allclose(one(fig, "mean|no_qk_norm|0.01").get_ydata(),
                               pd.concat(sm, axis=1).mean(axis=1))
    with pytest.raises(R.MissingData, match="no runs at lr"):
        R.loss_curves(grid, lr=0.5)


def test_grad_norm_curves_spikes_on_the_grad_norm(grid):
    fig = R.grad_norm_curves(grid)
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_ylabel() == "grad L2 norm"
    sp = one(fig, "spikes|olmo0424|0.01")
    ev = grid.spikes[grid.spikes[F.RUN_ID] == run_id(grid, "olmo0424", 0, 1e-2)].sort_values("step")
    assert list(sp.get_xdata()) == ev["step"].tolist()
    np.testing.assert_allclose(sp.get_ydata(), ev["value"])  # the event value is the grad norm there
    # the diverged run's last grad norm is inf: the x sits on the last finite value
    gn = grid.metric(M.GRAD_NORM)
    dg = gn[gn[F.RUN_ID] == run_id(grid, *DIV)].set_index("step")["value"]
    assert np.isinf(dg.loc[DIV_STEP])
    np.testing.assert_allclose(one(fig, "diverged|olmo0424|0.1").get_ydata(), [dg.loc[DIV_STEP - 1]])
    # filtering spikes by series: no loss-series events in the synthetic grid
    assert not gid_objs(R.grad_norm_curves(grid, spike_series=M.TRAIN_LOSS), "spikes|")


def test_log_z_and_embedding_norm_curves(grid):
    for fn, metric in ((R.log_z_curves, M.LOGITS_LOG_Z_MEAN), (R.embedding_norm_curves, M.PARAM_NORM_EMBED)):
        fig = fn(grid)
        assert len(gid_objs(fig, "mean|")) == len(ARMS) * len(LRS)
        assert not gid_objs(fig, "spikes|")
        assert fig.axes[0].get_ylabel() == S.axis_label(metric)
        assert_axes_labelled(fig)
    fig = R.log_z_curves(grid, lr=1e-3)
    s = np.asarray(one(fig, "mean|olmo0424|0.001").get_xdata(), dtype=float)
    np.testing.assert_allclose(one(fig, "mean|olmo0424|0.001").get_ydata(), 0.1 + 0.002 * s)


def test_arm_without_data_is_skipped_with_reason(grid, caplog):
    gone = set(grid.runs.loc[grid.runs[F.ARM] == "no_qk_norm", F.RUN_ID])
    s = grid.series
    g2 = F.GridData(grid.name, grid.runs, s[~(s[F.RUN_ID].isin(gone) & (s["metric"] == M.GRAD_NORM))],
                    grid.dense, grid.spikes, grid.params, grid.baseline)
    with caplog.at_level(logging.INFO, logger="reports.figures"):
        fig = R.grad_norm_curves(g2)
    assert fig.skipped == {"no_qk_norm": "no finite grad/norm points"}
    assert not gid_objs(fig, "mean|no_qk_norm") and len(gid_objs(fig, "mean|olmo2|")) == 3
    assert "no_qk_norm" in caplog.text and "no finite grad/norm points" in caplog.text
    assert "skipped" in fig.axes[0].get_title()
    empty = F.GridData(grid.name, grid.runs, s[s["metric"] != M.GRAD_NORM])
    with pytest.raises(R.MissingData, match="grad/norm"):
        R.grad_norm_curves(empty)


def test_layer_grad_heatmap(grid):
    rid = run_id(grid, "olmo0424", 0, 1e-2)
    fig = R.layer_grad_heatmap(grid, rid)
    mesh = one(fig, "heatmap")
    arr = mesh.get_array()
    assert arr.shape == (4, 200)
    d = grid.dense
    d = d[(d[F.RUN_ID] == rid) & (d["key"] == M.GRAD_NORM) & (d["head"] == -1)]
    expect = d.pivot(index="layer", columns="step", values="value").to_numpy()
    np.testing.assert_allclose(np.ma.getdata(arr), expect)
    assert mesh.norm.__class__.__name__ == "LogNorm"
    ticks = one(fig, "spike_ticks")
    assert list(ticks.get_xdata()) == [80, 150]
    assert list(one(fig, "spike_leading").get_ydata()) == [1, 1]  # led by layer 1
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "layer"
    assert_axes_labelled(fig)
    # the diverged run: non-finite grad norms are masked, the divergence is marked
    fig = R.layer_grad_heatmap(grid, run_id(grid, *DIV))
    arr = one(fig, "heatmap").get_array()
    assert arr.shape == (4, DIV_STEP + 1) and arr.mask[:, -1].all() and not arr.mask[:, :-1].any()
    assert list(one(fig, "diverged").get_xdata()) == [DIV_STEP]
    with pytest.raises(R.MissingData):
        R.layer_grad_heatmap(grid, "no_such_run")


def test_attn_logit_curves_dense_and_series_fallback(grid):
    fig = R.attn_logit_curves(grid)  # several LRs: the baseline's best LR (1e-2)
    assert len(fig.axes) == 3 and "lr=0.01" in fig.get_suptitle()
    for arm in ARMS:
        assert len(gid_objs(fig, f"layer|{arm}|")) == 4
    # max over heads (head 0) of layer l is 5 + (3 - l) for the baseline, growing for the others
    np.testing.assert_allclose(one(fig, "layer|olmo2|0").get_ydata(), 8.0)
    np.testing.assert_allclose(one(fig, "layer|olmo2|3").get_ydata(), 5.0)
    line = one(fig, "layer|no_qk_norm|0")
    np.testing.assert_allclose(line.get_ydata(), 8.0 * (1.0 + np.asarray(line.get_xdata()) / 20.0))
    assert "attention logit" in fig.axes[0].get_ylabel()
    assert_axes_labelled(fig)
    dense = grid.dense[grid.dense["key"] != M.ATTN_LOGIT_MAX]
    no_dense = F.GridData(grid.name, grid.runs, grid.series, dense, baseline=grid.baseline)
    fig2 = R.attn_logit_curves(no_dense)
    for gid in ("layer|olmo2|0", "layer|no_qk_norm|0", "layer|olmo0424|2"):
        np.testing.assert_allclose(one(fig2, gid).get_ydata(), one(fig, gid).get_ydata())


def test_update_rms_and_eps(grid):
    fig = R.update_rms_and_eps(grid, lr=1e-3)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 2 * len(ARMS)
    for layer in range(4):
        np.testing.assert_allclose(one_in(axes[0], f"layer|olmo2|{layer}").get_ydata(), 0.5 + 0.1 * layer)
        np.testing.assert_allclose(one_in(axes[3], f"layer|olmo2|{layer}").get_ydata(), 0.01 * layer)
    assert "update RMS" in axes[0].get_ylabel() and "epsilon" in axes[3].get_ylabel()
    assert_axes_labelled(fig)
    bare = F.GridData(grid.name, grid.runs, grid.series, grid.dense.iloc[0:0], baseline=grid.baseline)
    with pytest.raises(R.MissingData):
        R.update_rms_and_eps(bare)


def one_in(ax, gid):
    objs = [a for a in ax.get_lines() if a.get_gid() == gid]
    assert len(objs) == 1
    return objs[0]


# ---------------------------------------------------------------- summaries


def test_lr_sensitivity_figure(grid):
    lrsens = pd.DataFrame({"arm": list(ARMS), "n_lrs": 3, "sensitivity": [0.1, 0.2, 0.3],
                           "sensitivity_sd": 0.0, "optimal_lr": 1e-2, "best_loss": [3.7, 3.7, 3.8],
                           "n_diverged": [0, 0, 1]})
    fig = R.lr_sensitivity_figure(grid, lrsens)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == S.LR_LABEL and "eval loss" in ax.get_ylabel()
    runs = grid.runs
    drow = runs[runs[F.RUN_ID] == run_id(grid, *DIV)].iloc[0]
    div = one(fig, "diverged|olmo0424")
    assert list(div.get_xdata()) == [1e-1] and div.get_marker() == S.DIVERGED_MARKER
    np.testing.assert_allclose(div.get_ydata(), [drow[F.LOSS_AT_INIT]])
    assert len(gid_objs(fig, "diverged|")) == 1
    assert len(one(fig, "seeds|olmo0424").get_xdata()) == 8 and len(one(fig, "seeds|olmo2").get_xdata()) == 9
    # the mean at lr 0.1 counts the diverged run at its loss at init
    arm = runs[(runs[F.ARM] == "olmo0424") & np.isclose(runs[F.LR], 0.1)]
    y = np.where(arm[F.STATUS] == "diverged", arm[F.LOSS_AT_INIT], arm[F.FINAL_EVAL_LOSS])
    mean = one(fig, "mean|olmo0424")
    assert list(mean.get_xdata()) == list(LRS)
    np.testing.assert_allclose(mean.get_ydata()[2], y.mean())
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("diverged") for t in labels) and any("sensitivity 0.3" in t for t in labels)
    np.testing.assert_allclose(one(fig, "optimal|olmo0424").get_ydata(), [3.8])
    with pytest.raises(R.MissingData, match=">= 2 learning rates"):
        R.lr_sensitivity_figure(synthetic_grid(seeds=(0,), steps=60))


def test_growth_vs_width_accepts_both_column_names(grid):
    probe = pd.DataFrame({"init": ["normal"] * 3 + ["mitchell"] * 3, "d_model": [64, 128, 256] * 2, "seed": 0,
                          "lambda_act": [0.01, 0.0, -0.01, 0.1, 0.2, 0.3],
                          "lambda_grad": [0.0, 0.0, 0.0, -0.1, -0.2, -0.3]})
    fig = R.growth_vs_width(probe)
    act, grad = fig.axes
    assert act.get_xlabel() and "activations" in act.get_ylabel() and "gradients" in grad.get_ylabel()
    np.testing.assert_allclose(one_in(act, "mean|mitchell").get_ydata(), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(one_in(grad, "mean|mitchell").get_ydata(), [-0.1, -0.2, -0.3])
    assert list(one_in(act, "mean|normal").get_xdata()) == [64, 128, 256]
    for ax in (act, grad):
        zero = one_in(ax, "zero")
        assert list(zero.get_ydata()) == [0, 0]
    renamed = probe.rename(columns={"lambda_act": "growth_act", "lambda_grad": "growth_grad"})
    fig2 = R.growth_vs_width(renamed)
    np.testing.assert_allclose(one_in(fig2.axes[0], "mean|normal").get_ydata(), [0.01, 0.0, -0.01])
    # from runs (a GridData): one width, mean over the runs of each init
    fig3 = R.growth_vs_width(grid)
    # (9 * .2 + 9 * .05) / 18
    np.testing.assert_allclose(one_in(fig3.axes[0], "mean|normal").get_ydata(), [0.125])
    with pytest.raises(R.MissingData):
        R.growth_vs_width(pd.DataFrame({"init": ["a"], "width": [1]}))


def test_spike_scores_figure_from_runs(grid):
    cmp = compare_frame()
    fig = R.spike_scores_figure(grid, cmp)  # the baseline's best LR, 1e-2
    loss_ax, gn_ax = fig.axes
    runs = grid.runs[np.isclose(grid.runs[F.LR], 1e-2)]
    for arm in ARMS:
        x = runs.loc[runs[F.ARM] == arm, F.SPIKE_SCORE_GRAD_NORM].to_numpy(float)
        bar = [p for p in gn_ax.patches if p.get_gid() == f"bar|{arm}"]
        assert len(bar) == 1
        np.testing.assert_allclose(bar[0].get_height(), x.mean())
        np.testing.assert_allclose(sorted(one_in(gn_ax, f"seeds|{arm}").get_ydata()), sorted(x))
    x = runs.loc[runs[F.ARM] == "olmo0424", F.SPIKE_SCORE_GRAD_NORM].to_numpy(float)
    half = sps.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    ci = [c for c in gn_ax.collections if c.get_gid() == "ci|olmo0424"][0]
    np.testing.assert_allclose(ci.get_segments()[0][:, 1], [max(x.mean() - half, 0.0), x.mean() + half])
    ptext = [t for t in gn_ax.texts if t.get_gid() == "p|olmo0424"]
    assert ptext and ptext[0].get_text() == "p_holm=0.4"
    assert not [t for t in loss_ax.texts if t.get_gid() == "p|olmo0424"]  # no loss rows in cmp
    assert "loss spike score" in loss_ax.get_ylabel() and "grad-norm" in gn_ax.get_ylabel()
    assert_axes_labelled(fig)


def test_spike_scores_figure_from_compare_frame():
    fig = R.spike_scores_figure(compare_frame(), baseline="olmo2")
    (ax,) = fig.axes
    ci = [c for c in ax.collections if c.get_gid() == "ci|olmo0424"][0]
    np.testing.assert_allclose(ci.get_segments()[0][:, 1], [-0.1, 0.6])
    bar = [p for p in ax.patches if p.get_gid() == "bar|olmo0424"][0]
    np.testing.assert_allclose(bar.get_height(), 0.17)
    assert "olmo2" in ax.get_ylabel()


def test_forest_plot_whiskers_zero_line_and_annotations():
    cmp = compare_frame()
    fig = R.forest_plot(cmp, F.FINAL_EVAL_LOSS, baseline="olmo2")
    ax = fig.axes[0]
    ci = [c for c in ax.collections if c.get_gid() == "ci|no_qk_norm"]
    assert len(ci) == 1
    seg = ci[0].get_segments()[0]
    np.testing.assert_allclose(seg[:, 0], [0.01, 0.09])
    assert not [c for c in ax.collections if c.get_gid() == "ci|olmo0424"]  # NaN CI: no whisker
    np.testing.assert_allclose(one_in(ax, "diff|no_qk_norm").get_xdata(), [0.05])
    np.testing.assert_allclose(one_in(ax, "diff|olmo0424").get_xdata(), [0.30])
    zero = one_in(ax, "zero")
    assert list(zero.get_xdata()) == [0, 0]
    texts = {t.get_gid(): t.get_text() for t in ax.texts}
    assert texts["annot|no_qk_norm"] == "p_holm=0.02, n=3"
    assert texts["annot|olmo0424"] == "n=2: too few seeds"
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert ticks == {"no_qk_norm": 1, "olmo0424": 0}  # first arm on top
    assert one_in(ax, "diff|olmo0424").get_ydata()[0] == 0
    assert "olmo2" in ax.get_xlabel() and ax.get_ylabel() == "arm"
    with pytest.raises(R.MissingData, match="no compare rows"):
        R.forest_plot(cmp, "nope")


# ---------------------------------------------------------------- saving and the report


def test_save_figure_png_pdf_atomic(tmp_path):
    fig = R.forest_plot(compare_frame(), F.FINAL_EVAL_LOSS)
    paths = R.save_figure(fig, tmp_path / "out", "forest: eval/loss")
    assert [p.name for p in paths] == ["forest_eval_loss.png", "forest_eval_loss.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:4] == b"%PDF"
    # dpi 150: width in pixels = inches * 150 (bbox tight trims a little)
    w = int.from_bytes(paths[0].read_bytes()[16:20], "big")
    assert 0.7 * 7.0 * 150 < w <= 7.0 * 150 + 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)

    class Boom(Exception):
        pass

    def broken(*a, **k):
        raise Boom

    old = paths[0].read_bytes()
    fig.savefig = broken
    with pytest.raises(Boom):
        R.save_figure(fig, tmp_path / "out", "forest: eval/loss")
    assert paths[0].read_bytes() == old  # the old file is untouched, no temp file is left
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_report_figures_makes_what_the_data_supports(tmp_path, caplog):
    small = synthetic_grid(seeds=(0, 1), lrs=(1e-3, 1e-2), steps=60, diverged={("olmo0424", 1, 1e-3): 40},
                           spike_steps={("olmo0424", 0, 1e-2): [30, 45], ("olmo2", 1, 1e-2): [20, 50],
                                        ("no_qk_norm", 0, 1e-3): [25]})
    reasons: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="reports.figures"):
        paths = R.report_figures(small, compare_frame(), None, tmp_path, reasons=reasons, formats=("png",))
    stems = {p.stem for p in paths}
    # worst arm: olmo0424 (two spikes in one run) over no_qk_norm (one)
    assert stems == {"loss_curves", "grad_norm_curves", "layer_grad_heatmap_baseline",
                     "layer_grad_heatmap_worst_arm_olmo0424", "attn_logit_curves", "log_z_curves",
                     "embedding_norm_curves", "update_rms_and_eps", "lr_sensitivity", "spike_scores",
                     f"forest_{F.FINAL_EVAL_LOSS}", f"forest_{F.SPIKE_SCORE_GRAD_NORM}"}
    assert len(paths) == len(stems)
    assert all(p.suffix == ".png" and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert reasons == {"growth_vs_width": "growth exponents for 1 width(s), need >= 2"}
    assert "growth_vs_width skipped" in caplog.text


def test_report_figures_skips_with_reasons(tmp_path, caplog):
    g = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0, 1), steps=60)
    g = F.GridData(g.name, g.runs, g.series[g.series["metric"] != M.LOGITS_LOG_Z_MEAN], g.dense.iloc[0:0],
                   g.spikes, g.params, baseline=None)
    reasons: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="reports.figures"):
        paths = R.report_figures(g, out_dir=tmp_path, reasons=reasons, formats=("png",))
    stems = {p.stem for p in paths}
    assert {"loss_curves", "grad_norm_curves", "attn_logit_curves", "embedding_norm_curves"} == stems
    assert "is 0 in every run" in reasons["spike_scores"]  # no spikes: no figure of zeros
    assert "needs >= 2 learning rates" in reasons["lr_sensitivity"]
    assert reasons["layer_grad_heatmap"] == "no dense grad/norm rows"
    assert "logits/log_z_mean" in reasons["log_z_curves"]
    assert "update/rms" in reasons["update_rms_and_eps"]
    assert reasons["forest"].startswith("no compare_df")
    for name in ("lr_sensitivity", "layer_grad_heatmap", "log_z_curves", "forest"):
        assert f"figure {name} skipped" in caplog.text


# ---------------------------------------------------------------- figures with nothing to show


@pytest.fixture(scope="module")
def two_seeds() -> F.GridData:
    """2 seeds, one grad-norm spike (no_qk_norm seed 0), every loss spike score 0."""
    g = synthetic_grid(seeds=(0, 1), steps=60, spike_steps={("no_qk_norm", 0, 3e-3): [30]})
    g.runs[F.SPIKE_SCORE_LOSS] = 0.0
    return g


def test_spike_scores_drop_an_all_zero_panel_not_the_figure(two_seeds):
    fig = R.spike_scores_figure(two_seeds)
    (ax,) = fig.axes
    assert ax.get_title() == "grad norm" and "grad-norm" in ax.get_ylabel()
    assert fig.skipped == {"loss panel": f"{F.SPIKE_SCORE_LOSS} is 0 in every run (no spikes)"}
    assert fig.get_suptitle().count("is 0 in every run") == 1
    np.testing.assert_allclose([p.get_height() for p in ax.patches if p.get_gid() == "bar|no_qk_norm"],
                               [100.0 / 60 / 2])  # one spike in 60 points, seed mean of (1/60, 0)
    cmp = R.spike_scores_figure(compare_arms(two_seeds, n_boot=200), baseline="olmo2")
    assert [a.get_title() for a in cmp.axes] == ["grad norm"]
    assert cmp.skipped == {"loss panel": "every paired difference is 0"}
    none = F.GridData(two_seeds.name, two_seeds.runs.assign(**{F.SPIKE_SCORE_GRAD_NORM: 0.0}),
                      baseline="olmo2")
    with pytest.raises(R.MissingData, match=f"{F.SPIKE_SCORE_GRAD_NORM} is 0 in every run"):
        R.spike_scores_figure(none)


def test_forest_plot_of_nothing_raises_with_the_reason(two_seeds):
    cmp = compare_arms(two_seeds, n_boot=200)
    with pytest.raises(R.MissingData, match="no run diverged"):
        R.forest_plot(cmp, F.DIVERGED_AT_STEP)
    with pytest.raises(R.MissingData, match=f"every paired difference in {F.SPIKE_SCORE_LOSS} is 0"):
        R.forest_plot(cmp, F.SPIKE_SCORE_LOSS)
    nan = cmp.assign(mean_diff=np.nan)
    with pytest.raises(R.MissingData, match="no arm has a finite mean difference"):
        R.forest_plot(nan, F.FINAL_EVAL_LOSS)
    fig = R.forest_plot(cmp, F.SPIKE_SCORE_GRAD_NORM)  # olmo0424 ties (0), no_qk_norm does not
    assert len(gid_objs(fig, "diff|")) == 2


def test_too_few_seeds_is_said_once_per_figure(two_seeds):
    cmp = compare_arms(two_seeds, n_boot=200)
    fig = R.forest_plot(cmp, F.FINAL_EVAL_LOSS, baseline="olmo2")
    ax = fig.axes[0]
    texts = {t.get_gid(): t.get_text() for t in ax.texts}
    assert texts == {"annot|no_qk_norm": "n=2", "annot|olmo0424": "n=2"}  # no per-row "too few seeds"
    assert ax.get_title().count("too few seeds") == 1 and "(n=2) for wilcoxon" in ax.get_title()
    fig = R.spike_scores_figure(two_seeds, cmp)
    assert not [t for t in fig.axes[0].texts if t.get_gid().startswith("p|")]
    assert fig.get_suptitle().count("no p-values: too few seeds (n=2) for wilcoxon") == 1


def test_curves_of_only_zeros_or_nans_are_not_drawn(grid):
    s = grid.series
    for value, reason in ((0.0, "every value is 0"), (np.nan, "no finite")):
        series = s.assign(value=s["value"].where(s["metric"] != M.LOGITS_LOG_Z_MEAN, value))
        with pytest.raises(R.MissingData, match=reason):
            R.log_z_curves(F.GridData(grid.name, grid.runs, series, baseline=grid.baseline))
    d = grid.dense
    dense = d.assign(value=d["value"].where(d["key"] != M.OPTIM_EPS_REGIME, 0.0))
    fig = R.update_rms_and_eps(F.GridData(grid.name, grid.runs, grid.series, dense, baseline=grid.baseline),
                               lr=1e-3)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == len(ARMS) and "update RMS" in axes[0].get_ylabel()
    assert fig.skipped == {M.OPTIM_EPS_REGIME: "every value is 0"}
    dense = d.assign(value=d["value"].where(d["key"] != M.ATTN_LOGIT_MAX, np.nan))
    series = s[~s["metric"].str.startswith(M.ATTN_LOGIT_MAX)]
    with pytest.raises(R.MissingData, match="no finite value"):
        R.attn_logit_curves(F.GridData(grid.name, grid.runs, series, dense, baseline=grid.baseline))


def test_forest_plot_shows_every_lr_of_an_arm(grid):
    cmp = compare_arms(grid, metrics=[F.FINAL_EVAL_LOSS], n_boot=200)
    fig = R.forest_plot(cmp, F.FINAL_EVAL_LOSS, baseline="olmo2")
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == [f"{arm}, lr={lr:g}" for arm in ARMS[1:] for lr in LRS]  # top to bottom
    for arm in ARMS[1:]:
        for lr in LRS:
            row = cmp[(cmp["arm"] == arm) & np.isclose(cmp["lr"], lr)].iloc[0]
            np.testing.assert_allclose(one_in(ax, f"diff|{arm}|{lr:g}").get_xdata(), [row["mean_diff"]])
