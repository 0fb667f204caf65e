"""Report figures on the synthetic grid: the plotted content, not just that nothing crashes."""

from __future__ import annotations

import logging

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats as sps

from reports import figures as R
from reports import figures_common as D
from reports import figures_curves as FC
from reports import figures_summary as FS
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


LOSS_SPIKE = ("olmo0424", 0, 1e-2, 80)  # a loss event where the synthetic loss has its bump


@pytest.fixture(scope="module")
def grid() -> F.GridData:
    g = synthetic_grid(lrs=LRS, diverged={DIV: DIV_STEP}, spike_steps=SPIKES)
    arm, seed, lr, step = LOSS_SPIKE
    rid = run_id(g, arm, seed, lr)
    loss = g.metric(M.TRAIN_LOSS)
    value = float(loss.loc[(loss[F.RUN_ID] == rid) & (loss["step"] == step), "value"].iloc[0])
    event = {F.RUN_ID: rid, "step": step, "series": "train/loss@olmo2", "value": value, "sigma": 8.0,
             "mean": 4.0, "std": 0.1, "leading_layer": 1, "leading_sigma": 9.0, "attn_logit_rising": True,
             "log_z_rising": False}
    g.spikes = pd.concat([g.spikes, pd.DataFrame([event])], ignore_index=True)
    return g


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


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_axes_labelled(fig: Figure) -> None:
    """Every column of panels has an x label and every row a y label (shared axes are labelled
    once, on the outer panels); a colour bar has its label."""
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel()
    axes = panels(fig)
    for col in {ax.get_subplotspec().colspan.start for ax in axes}:
        assert any(ax.get_xlabel().strip() for ax in axes if ax.get_subplotspec().colspan.start == col), col
    for row in {ax.get_subplotspec().rowspan.start for ax in axes}:
        assert any(ax.get_ylabel().strip() for ax in axes if ax.get_subplotspec().rowspan.start == row), row


def legend_texts(fig: Figure) -> list[str]:
    """The figure legends' entries in reading order (rows top to bottom, left to right)."""
    fig.canvas.draw()
    texts = [t for leg in fig.legends for t in leg.get_texts()]
    boxes = {id(t): t.get_window_extent() for t in texts}
    return [t.get_text() for t in sorted(texts, key=lambda t: (-round(boxes[id(t)].y0), boxes[id(t)].x0))]


def raw_seed_mean(grid, metric, arm, lr) -> pd.Series:
    """The mean over an arm's seeds at one LR of the raw values (NaN and inf skipped)."""
    s = grid.metric(metric)
    ids = grid.runs.loc[(grid.runs[F.ARM] == arm) & np.isclose(grid.runs[F.LR], lr), F.RUN_ID]
    s = s[s[F.RUN_ID].isin(set(ids))].assign(value=lambda d: d["value"].replace([np.inf, -np.inf], np.nan))
    return s.groupby("step")["value"].mean()


def ema_seed_mean(grid, metric, arm, lr, span) -> pd.Series:
    s = grid.metric(metric)
    ids = grid.runs.loc[(grid.runs[F.ARM] == arm) & np.isclose(grid.runs[F.LR], lr), F.RUN_ID]
    per_run = [s[s[F.RUN_ID] == r].set_index("step")["value"].ewm(span=span, adjust=True).mean() for r in ids]
    return pd.concat(per_run, axis=1).mean(axis=1)


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


def test_arm_colors_baseline_black_then_okabe_ito_in_grid_order():
    c = S.arm_colors(["olmo2", "no_qk_norm", "olmo0424"], baseline="olmo2")
    assert c == {"olmo2": S.BASELINE_COLOR, "no_qk_norm": S.PALETTE[0], "olmo0424": S.PALETTE[1]}
    assert S.BASELINE_COLOR == "#000000" and S.PALETTE[:3] == ("#E69F00", "#56B4E9", "#009E73")
    many = [f"arm{i}" for i in range(15)]
    colors = S.arm_colors(["base", *many], baseline="base")
    assert len({colors[a] for a in many}) == 15 and S.BASELINE_COLOR not in [colors[a] for a in many]
    assert S.arm_colors(["a", "b"]) == {"a": S.PALETTE[0], "b": S.PALETTE[1]}  # no baseline: no black
    assert S.HEATMAP_CMAP == "cividis" and S.LAYER_CMAP == "viridis"


def test_labels_are_words_with_units():
    assert S.axis_label(M.GRAD_NORM) == "Gradient L2 norm" and S.axis_label("step") == "Step"
    assert S.axis_label(M.TRAIN_CE_LOSS) == "Training loss (CE, nats)"
    assert S.axis_label(M.ATTN_LOGIT_MAX) == "Max attention logit"
    assert S.axis_label(F.LR) == "Peak learning rate"
    assert S.axis_label(F.FINAL_EVAL_LOSS) == "Final eval loss (CE, nats)"
    assert S.axis_label(M.layer_key(M.GRAD_NORM, 3)) == "Gradient L2 norm, layer 3"
    assert S.metric_name(M.ATTN_ENTROPY_MIN) == "Min entropy of the attention rows"  # from the registry
    assert S.metric_name("some/unknown_key") == "Some unknown key"
    assert S.humanize("no finite grad/norm points; diverged runs count as loss_at_init") == \
        "no finite gradient L2 norm points; diverged runs count as loss at init"


# ---------------------------------------------------------------- curves over steps
def test_a_spike_training_rewound_from_is_marked_at_its_own_value_not_on_the_rerun_line():
    g = synthetic_grid(arms=("nothing", "rewind"), seeds=(0, 1), steps=200, baseline="nothing")
    ids = [run_id(g, "rewind", seed, 3e-3) for seed in (0, 1)]
    events = [{F.RUN_ID: rid, "step": 120, "series": "train/loss@online", "value": v, "sigma": 30.0,
               "mean": 4.0, "std": 0.1, "action": "rewind"} for rid, v in zip(ids, (9.0, 10.0))]
    g.spikes = pd.concat([g.spikes, pd.DataFrame(events)], ignore_index=True)
    fig = R.loss_curves(g)
    marker = one(fig, "rewound|rewind|0.003")
    assert list(marker.get_xdata()) == [120] and list(marker.get_ydata()) == [9.5]  # the seed mean
    assert marker.get_marker() == S.REWIND_MARKER
    assert not gid_objs(fig, "spikes|")  # not also a spike marker on the re-run line
    assert "loss spike, rewound from (its value)" in [t.get_text() for t in fig.legends[0].get_texts()]




def test_loss_curves_ema_over_faint_raw_one_panel_per_lr(grid):
    fig = R.loss_curves(grid)
    assert fig.skipped == {}
    assert [ax.get_title() for ax in panels(fig)] == [f"lr = {lr:g}" for lr in LRS]
    for arm in ARMS:
        means = gid_objs(fig, f"mean|{arm}|")
        assert sorted(m.get_gid().split("|")[2] for m in means) == sorted(f"{lr:g}" for lr in LRS)
        assert len(gid_objs(fig, f"band|{arm}|")) == 3 and len(gid_objs(fig, f"raw|{arm}|")) == 3
    span = D.ema_span(200)
    assert span == 10 and f"EMAs (span {span} points)" in fig.get_suptitle()
    # the bold line: the seed mean of each run's EMA; the faint one: the raw seed mean
    np.testing.assert_allclose(one(fig, "mean|olmo2|0.01").get_ydata(),
                               ema_seed_mean(grid, M.TRAIN_LOSS, "olmo2", 1e-2, span).to_numpy())
    raw = one(fig, "raw|olmo2|0.01")
    np.testing.assert_allclose(raw.get_ydata(), raw_seed_mean(grid, M.TRAIN_LOSS, "olmo2", 1e-2).to_numpy())
    assert raw.get_alpha() == S.RAW_ALPHA
    assert raw.get_linewidth() < one(fig, "mean|olmo2|0.01").get_linewidth()
    # only the loss event is marked (grad-norm events belong on the grad-norm figure), at the arm's
    # raw seed mean there: on the line drawn, not at the one seed's own (spiked) loss
    arm, seed, lr, step = LOSS_SPIKE
    sp = one(fig, f"spikes|{arm}|{lr:g}")
    mean_there = raw_seed_mean(grid, M.TRAIN_LOSS, arm, lr).loc[step]
    assert list(sp.get_xdata()) == [step]
    np.testing.assert_allclose(sp.get_ydata(), [mean_there])
    own = grid.metric(M.TRAIN_LOSS)
    own = own[own[F.RUN_ID] == run_id(grid, arm, seed, lr)].set_index("step")["value"].loc[step]
    assert own > mean_there + 0.1
    assert len(gid_objs(fig, "spikes|")) == 1
    # the diverged run: an x on the arm's raw seed mean at the divergence step
    div = one(fig, "diverged|olmo0424|0.1")
    assert list(div.get_xdata()) == [DIV_STEP] and div.get_marker() == S.DIVERGED_MARKER
    np.testing.assert_allclose(div.get_ydata(), [raw_seed_mean(grid, M.TRAIN_LOSS, *DIV[::2]).loc[DIV_STEP]])
    assert len(gid_objs(fig, "diverged|")) == 1
    labels = legend_texts(fig)
    assert len(fig.legends) == 1 and {"diverged", "loss spike", "raw seed mean"} <= set(labels)
    assert labels[:3] == ["olmo2 (baseline), n=3", "no_qk_norm, n=3", "olmo0424, n=3"]
    ax = panels(fig)[0]
    assert ax.get_yscale() == "linear" and ax.get_xlabel() == "Step"
    assert ax.get_ylabel() == "Training loss (CE + z-loss, nats)"
    assert_axes_labelled(fig)


def test_loss_curves_prefer_the_cross_entropy():
    g = synthetic_grid(seeds=(0,), steps=60)
    ce = g.series[g.series["metric"] == M.TRAIN_LOSS].assign(metric=M.TRAIN_CE_LOSS)
    g.series = pd.concat([g.series, ce.assign(value=ce["value"] - 0.1)], ignore_index=True)
    fig = R.loss_curves(g)
    assert panels(fig)[0].get_ylabel() == "Training loss (CE, nats)"
    np.testing.assert_allclose(one(fig, "mean|olmo2|0.003").get_ydata(),
                               ema_seed_mean(g, M.TRAIN_CE_LOSS, "olmo2", 3e-3, D.ema_span(60)).to_numpy())
    sparse = R.embedding_norm_curves(synthetic_grid(seeds=(0,), steps=FC.SPARSE_POINTS))
    assert not gid_objs(sparse, "raw|") and "EMA" not in sparse.get_suptitle()  # a probe series: raw, no lag
    assert one(sparse, "mean|olmo2|0.003").get_marker() == "o"  # and its points shown


def test_loss_curves_options(grid):
    fig = R.loss_curves(grid, smooth=25, lr=1e-2, logy=True, band="sd")
    (ax,) = panels(fig)
    assert ax.get_yscale() == "log" and "lr = 0.01" in fig.get_suptitle()
    for arm in ARMS:
        assert [m.get_gid() for m in gid_objs(fig, f"mean|{arm}|")] == [f"mean|{arm}|0.01"]
    np.testing.assert_allclose(one(fig, "mean|no_qk_norm|0.01").get_ydata(),
                               ema_seed_mean(grid, M.TRAIN_LOSS, "no_qk_norm", 1e-2, 25).to_numpy())
    raw = R.loss_curves(grid, smooth=1, lr=1e-2)  # unsmoothed: the bold line is the raw mean
    assert not gid_objs(raw, "raw|")
    np.testing.assert_allclose(one(raw, "mean|olmo2|0.01").get_ydata(),
                               raw_seed_mean(grid, M.TRAIN_LOSS, "olmo2", 1e-2).to_numpy())
    assert "raw seed mean" not in legend_texts(raw) and "EMA" not in raw.get_suptitle()
    with pytest.raises(R.MissingData, match="no runs at lr"):
        R.loss_curves(grid, lr=0.5)
    with pytest.raises(ValueError, match="band"):
        R.loss_curves(grid, band="iqr")


def test_grad_norm_curves_spikes_on_the_grad_norm(grid):
    fig = R.grad_norm_curves(grid)
    ax = panels(fig)[1]  # lr 0.01
    assert ax.get_yscale() == "log" and panels(fig)[0].get_ylabel() == "Gradient L2 norm"
    sp = one(fig, "spikes|olmo0424|0.01")
    assert list(sp.get_xdata()) == SPIKES[("olmo0424", 0, 1e-2)]
    mean = raw_seed_mean(grid, M.GRAD_NORM, "olmo0424", 1e-2)
    np.testing.assert_allclose(sp.get_ydata(), mean.loc[SPIKES[("olmo0424", 0, 1e-2)]].to_numpy())
    line = one(fig, "raw|olmo0424|0.01")  # the marker sits on the faint line it marks
    np.testing.assert_allclose(np.interp(sp.get_xdata(), line.get_xdata(), line.get_ydata()), sp.get_ydata())
    assert list(one(fig, "spikes|olmo2|0.01").get_xdata()) == [100]
    assert len(gid_objs(fig, "spikes|")) == 2  # the loss event is not a grad-norm spike
    assert "grad-norm spike" in legend_texts(fig)
    # the diverged run's last grad norm is inf: the x sits on the other seeds' mean there
    gn = grid.metric(M.GRAD_NORM)
    assert np.isinf(gn[gn[F.RUN_ID] == run_id(grid, *DIV)].set_index("step")["value"].loc[DIV_STEP])
    np.testing.assert_allclose(one(fig, "diverged|olmo0424|0.1").get_ydata(),
                               [raw_seed_mean(grid, M.GRAD_NORM, "olmo0424", 0.1).loc[DIV_STEP]])
    fig.canvas.draw()
    labels = [t.get_text() for t in panels(fig)[0].get_yticklabels(which="both") if t.get_text()]
    assert labels and not any("times" in t or "^" in t for t in labels)  # plain numbers, no 3x10^0


def test_log_z_and_embedding_norm_curves(grid):
    for fn, metric in ((R.log_z_curves, M.LOGITS_LOG_Z_MEAN), (R.embedding_norm_curves, M.PARAM_NORM_EMBED)):
        fig = fn(grid)
        assert len(gid_objs(fig, "mean|")) == len(ARMS) * len(LRS)
        assert not gid_objs(fig, "spikes|")
        assert panels(fig)[0].get_ylabel() == S.axis_label(metric)
        assert_axes_labelled(fig)
    fig = R.log_z_curves(grid, smooth=1, lr=1e-3)
    s = np.asarray(one(fig, "mean|olmo0424|0.001").get_xdata(), dtype=float)
    np.testing.assert_allclose(one(fig, "mean|olmo0424|0.001").get_ydata(), 0.1 + 0.002 * s)
    assert panels(fig)[0].get_ylabel() == "Mean log Z (nats)"


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
    assert "not shown: no_qk_norm (no finite gradient L2 norm points)" in fig.get_suptitle()
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
    assert mesh.norm.__class__.__name__ == "LogNorm" and mesh.get_cmap().name == "cividis"
    ticks = one(fig, "spike_ticks")
    assert sorted(ticks.get_xdata()) == [80, 80, 150]  # both events of the run, loss and grad norm
    assert list(one(fig, "spike_leading").get_ydata()) == [1, 1, 1]  # led by layer 1
    ax = panels(fig)[0]
    assert ax.get_xlabel() == "Step" and ax.get_ylabel() == "Layer"
    assert fig.get_suptitle() == "olmo0424, seed 0, lr = 0.01: gradient L2 norm per layer"
    assert set(legend_texts(fig)) == {"spike (any series)", "its leading layer"}
    assert_axes_labelled(fig)
    # the diverged run: non-finite grad norms are masked, the divergence is marked
    fig = R.layer_grad_heatmap(grid, run_id(grid, *DIV))
    arr = one(fig, "heatmap").get_array()
    assert arr.shape == (4, DIV_STEP + 1) and arr.mask[:, -1].all() and not arr.mask[:, :-1].any()
    assert list(one(fig, "diverged").get_xdata()) == [DIV_STEP] and "diverged" in legend_texts(fig)
    with pytest.raises(R.MissingData):
        R.layer_grad_heatmap(grid, "no_such_run")


def test_attn_logit_curves_max_over_layers_per_arm(grid):
    fig = R.attn_logit_curves(grid)
    assert len(panels(fig)) == len(LRS) and all(ax.get_yscale() == "log" for ax in panels(fig))
    # max over layers and heads: layer 0, head 0 (5 + 3), flat for the baseline, growing otherwise
    np.testing.assert_allclose(one(fig, "mean|olmo2|0.01").get_ydata(), 8.0)
    line = one(fig, "mean|no_qk_norm|0.01")
    np.testing.assert_allclose(line.get_ydata(), 8.0 * (1.0 + np.asarray(line.get_xdata()) / 20.0))
    assert panels(fig)[0].get_ylabel() == "Max attention logit"
    assert legend_texts(fig)[:3] == ["olmo2 (baseline), n=3", "no_qk_norm, n=3", "olmo0424, n=3"]
    assert_axes_labelled(fig)


def test_attn_logit_layers_dense_and_series_fallback(grid):
    fig = R.attn_logit_layers(grid)  # several LRs: the baseline's best LR (1e-2)
    assert len(panels(fig)) == 3 and "lr = 0.01" in fig.get_suptitle()
    for arm in ARMS:
        assert len(gid_objs(fig, f"layer|{arm}|")) == 4
    # max over heads (head 0) of layer l is 5 + (3 - l) for the baseline, growing for the others
    np.testing.assert_allclose(one(fig, "layer|olmo2|0").get_ydata(), 8.0)
    np.testing.assert_allclose(one(fig, "layer|olmo2|3").get_ydata(), 5.0)
    line = one(fig, "layer|no_qk_norm|0")
    np.testing.assert_allclose(line.get_ydata(), 8.0 * (1.0 + np.asarray(line.get_xdata()) / 20.0))
    assert "attention logit" in panels(fig)[0].get_ylabel()
    assert len(fig.legends) == 1 and legend_texts(fig) == [f"layer {i}" for i in range(4)]
    assert_axes_labelled(fig)
    dense = grid.dense[grid.dense["key"] != M.ATTN_LOGIT_MAX]
    no_dense = F.GridData(grid.name, grid.runs, grid.series, dense, baseline=grid.baseline)
    fig2 = R.attn_logit_layers(no_dense)
    for gid in ("layer|olmo2|0", "layer|no_qk_norm|0", "layer|olmo0424|2"):
        np.testing.assert_allclose(one(fig2, gid).get_ydata(), one(fig, gid).get_ydata())


def test_attn_logit_layers_wrap_into_rows():
    g = synthetic_grid(arms=("a", "b", "c", "d", "e"), seeds=(0,), steps=20, baseline="a")
    fig = R.attn_logit_layers(g)
    rows = sorted({ax.get_subplotspec().rowspan.start for ax in panels(fig)})
    assert len(panels(fig)) == 5 and rows == [0, 1]  # 3 + 2, never 5 in a row
    narrow = R.attn_logit_layers(g, width="single")
    assert max(ax.get_subplotspec().colspan.start for ax in panels(narrow)) == 1  # 2 columns


def test_update_rms_and_eps(grid):
    fig = R.update_rms_and_eps(grid, lr=1e-3)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["Training loss", "Gradient L2 norm", "Adam update RMS",
                                               "Eps-regime share"]
    assert {ax.get_subplotspec().rowspan.start for ax in axes} == {0, 1}  # 2 x 2
    # update RMS: 0.5 + 0.1 * layer, mean over 4 layers; eps share 0.01 * layer
    np.testing.assert_allclose(one_in(axes[2], "mean|olmo2|0.001").get_ydata(), 0.65)
    np.testing.assert_allclose(one_in(axes[3], "mean|olmo0424|0.001").get_ydata(), 0.015)
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log", "linear"]
    assert "update RMS" in axes[2].get_ylabel() and "epsilon" in axes[3].get_ylabel()
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
    loss_ax, attn_ax = panels(fig)
    for ax in (loss_ax, attn_ax):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == S.LR_LABEL
    assert "eval loss" in loss_ax.get_ylabel() and attn_ax.get_ylabel() == "Max attention logit"
    assert attn_ax.get_yscale() == "log"
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
    # the attention panel: the seed mean of each run's max attention logit per LR
    attn = runs[runs[F.ARM] == "no_qk_norm"].groupby(F.LR)[F.MAX_ATTN_LOGIT].mean()
    np.testing.assert_allclose(one(fig, "attn_mean|no_qk_norm").get_ydata(), attn.to_numpy())
    np.testing.assert_allclose(one(fig, "attn_diverged|olmo0424").get_ydata(), [drow[F.MAX_ATTN_LOGIT]])
    labels = legend_texts(fig)
    assert len(fig.legends) == 1
    assert any(t.startswith("diverged") for t in labels) and any("sensitivity 0.3" in t for t in labels)
    assert "optimal LR" in labels and "one seed" in labels
    np.testing.assert_allclose(one(fig, "optimal|olmo0424").get_ydata(), [3.8])
    assert [t.get_text() for t in loss_ax.get_xticklabels()] == ["0.001", "0.01", "0.1"]
    with pytest.raises(R.MissingData, match=">= 2 learning rates"):
        R.lr_sensitivity_figure(synthetic_grid(seeds=(0,), steps=60))


def test_lr_sensitivity_without_attention_logits_has_one_panel(grid):
    runs = grid.runs.assign(**{F.MAX_ATTN_LOGIT: np.nan})
    fig = R.lr_sensitivity_figure(runs)
    assert len(panels(fig)) == 1 and fig.skipped == {"attention panel": f"no {F.MAX_ATTN_LOGIT} value"}
    assert "not shown: attention panel (no max attention logit value)" in fig.get_suptitle()


def test_growth_vs_width_accepts_both_column_names(grid):
    probe = pd.DataFrame({"init": ["normal"] * 3 + ["mitchell"] * 3, "d_model": [64, 128, 256] * 2, "seed": 0,
                          "lambda_act": [0.01, 0.0, -0.01, 0.1, 0.2, 0.3],
                          "lambda_grad": [0.0, 0.0, 0.0, -0.1, -0.2, -0.3]})
    fig = R.growth_vs_width(probe)
    act, grad = fig.axes
    assert act.get_xlabel() == S.D_MODEL_LABEL and "activations" in act.get_ylabel()
    assert "gradients" in grad.get_ylabel()
    np.testing.assert_allclose(one_in(act, "mean|mitchell").get_ydata(), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(one_in(grad, "mean|mitchell").get_ydata(), [-0.1, -0.2, -0.3])
    assert list(one_in(act, "mean|normal").get_xdata()) == [64, 128, 256]
    assert [t.get_text() for t in act.get_xticklabels()] == ["64", "128", "256"]
    for ax in (act, grad):
        zero = one_in(ax, "zero")
        assert list(zero.get_ydata()) == [0, 0]
    assert legend_texts(fig) == ["normal", "mitchell"] and fig.legends[0].get_title().get_text() == "init"
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
    assert ptext and ptext[0].get_text() == "Holm p = 0.4"
    assert not [t for t in loss_ax.texts if t.get_gid() == "p|olmo0424"]  # no loss rows in cmp
    assert loss_ax.get_ylabel() == "Loss spike score (%)"
    assert gn_ax.get_ylabel() == "Grad-norm spike score (%)"
    assert [a.get_title() for a in fig.axes] == ["Loss", "Gradient norm"]
    assert legend_texts(fig) == ["seed mean", "one seed", "95% t-interval"]
    # one colour per arm, the same as in the curves
    colors = S.arm_colors(grid.arms, grid.baseline)
    for arm in ARMS:
        bar = [p for p in gn_ax.patches if p.get_gid() == f"bar|{arm}"][0]
        assert mcolors.to_hex(bar.get_facecolor()) == colors[arm].lower()
    assert_axes_labelled(fig)


def test_spike_scores_figure_from_compare_frame():
    fig = R.spike_scores_figure(compare_frame(), baseline="olmo2")
    (ax,) = fig.axes
    ci = [c for c in ax.collections if c.get_gid() == "ci|olmo0424"][0]
    np.testing.assert_allclose(ci.get_segments()[0][:, 1], [-0.1, 0.6])
    bar = [p for p in ax.patches if p.get_gid() == "bar|olmo0424"][0]
    np.testing.assert_allclose(bar.get_height(), 0.17)
    assert "vs olmo2" in fig.get_suptitle() and legend_texts(fig)[0] == "mean paired difference"


def test_spike_score_differences_one_bar_per_arm_and_lr(grid):
    cmp = compare_arms(grid, metrics=[F.SPIKE_SCORE_GRAD_NORM], n_boot=200)
    fig = R.spike_scores_figure(cmp, baseline="olmo2")
    (ax,) = panels(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{a}, lr={lr:g}" for a in ARMS[1:] for lr in LRS]
    row = cmp[(cmp["arm"] == "olmo0424") & np.isclose(cmp["lr"], 1e-2)].iloc[0]
    bar = [p for p in ax.patches if p.get_gid() == "bar|olmo0424|0.01"][0]
    np.testing.assert_allclose(bar.get_height(), row["mean_diff"])


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
    assert FS.forest_annotations(fig) == {"no_qk_norm": "+0.0500 [0.0100, 0.0900]  Holm p = 0.02  n=3",
                                          "olmo0424": "+0.300  n=2  (n=2: too few seeds)"}
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert ticks == {"no_qk_norm": 1, "olmo0424": 0}  # first arm on top
    assert one_in(ax, "diff|olmo0424").get_ydata()[0] == 0
    assert ax.get_xlabel() == "Δ final eval loss, arm − olmo2 (CE, nats)" and ax.get_ylabel() == "Arm"
    assert ax.get_xscale() == "linear"  # 0.05 and 0.3: under two decades apart
    assert legend_texts(fig) == ["mean paired difference", "95% bootstrap CI"]
    with pytest.raises(R.MissingData, match="no compare rows"):
        R.forest_plot(cmp, "nope")


def test_forest_plot_goes_symlog_when_differences_span_decades():
    rows = [("no_qk_norm", 17921.0, 15662.0, 18461.0), ("pre_norm", 8.26, 5.52, 11.0),
            ("no_z_loss", 2.89, 2.45, 3.33), ("olmo0424", 193.0, 180.0, 206.0)]
    cmp = pd.DataFrame(rows, columns=["arm", "mean_diff", "ci_low", "ci_high"]).assign(
        metric=F.MAX_ATTN_LOGIT, n_pairs=2, p_holm=np.nan, note="")
    fig = R.forest_plot(cmp, F.MAX_ATTN_LOGIT, baseline="olmo2")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    assert FS.symlog_threshold(cmp["mean_diff"]) == 1000.0  # the power of ten above the median
    # both readable: +193 and +17,921 sit more than a tenth of the axis apart, and in order
    to_axes = ax.transData.transform
    x = {arm: to_axes((one_in(ax, f"diff|{arm}").get_xdata()[0], 0))[0] for arm in ("olmo0424", "no_qk_norm")}
    width = ax.get_window_extent().width
    assert (x["no_qk_norm"] - x["olmo0424"]) / width > 0.1
    assert ax.get_xlim()[0] > -1000  # inside the linear part: no decades wasted left of 0 (no data there)
    notes = FS.forest_annotations(fig)
    assert notes["no_qk_norm"] == "+17,921 [15,662, 18,461]  n=2" and notes["olmo0424"].startswith("+193 [")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0", "1,000", "10,000"] and not any("^" in t for t in labels)
    assert FS.symlog_threshold([0.05, 0.3]) is None
    assert FS.symlog_ticks(-0.03, 7.0, 0.01, 5) == [-0.01, 0.0, 0.01, 1.0]  # every other power
    assert FS.symlog_ticks(-0.03, 7.0, 0.01, 9) == [-0.01, 0.0, 0.01, 0.1, 1.0]
    narrow = R.forest_plot(cmp, F.MAX_ATTN_LOGIT, baseline="olmo2", width="single")
    assert narrow.get_figwidth() == 3.5 and not narrow.axes[0].child_axes  # no room: values in the table
    assert narrow.axes[0].get_xscale() == "symlog"


def test_forest_panels_one_axis_per_metric():
    cmp = compare_frame()
    fig = R.forest_panels(cmp, (F.FINAL_EVAL_LOSS, F.SPIKE_SCORE_GRAD_NORM, "nope"), baseline="olmo2")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["Final eval loss", "Grad-norm spike score"]
    assert axes[0].get_xlabel() != axes[1].get_xlabel()  # each metric its own x axis and unit
    np.testing.assert_allclose(one_in(axes[1], "diff|olmo0424").get_xdata(), [0.17])
    assert list(fig.skipped) == ["nope"] and len(fig.legends) == 1
    with pytest.raises(R.MissingData, match="no compare rows"):
        R.forest_panels(cmp, ("nope",))


# ---------------------------------------------------------------- saving and the report


def test_save_figure_png_pdf_atomic(tmp_path):
    fig = R.forest_plot(compare_frame(), F.FINAL_EVAL_LOSS)
    paths = R.save_figure(fig, tmp_path / "out", "forest: eval/loss")
    assert [p.name for p in paths] == ["forest_eval_loss.png", "forest_eval_loss.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:4] == b"%PDF"
    # 300 dpi at exactly the text width: 7.2 in is 2160 pixels (no tight bounding box)
    assert png_size(paths[0]) == (2160, round(fig.get_figheight() * 300))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    again = R.save_figure(fig, tmp_path / "again", "forest: eval/loss")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # no timestamps

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


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_figures_makes_what_the_data_supports(tmp_path, caplog):
    small = synthetic_grid(seeds=(0, 1), lrs=(1e-3, 1e-2), steps=60, diverged={("olmo0424", 1, 1e-3): 40},
                           spike_steps={("olmo0424", 0, 1e-2): [30, 45], ("olmo2", 1, 1e-2): [20, 50],
                                        ("no_qk_norm", 0, 1e-3): [25]})
    reasons: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="reports.figures"):
        paths = R.report_figures(small, compare_frame(), None, tmp_path, reasons=reasons, formats=("png",))
    double = {p.stem for p in paths if p.parent == tmp_path}
    single = {p.stem for p in paths if p.parent == tmp_path / "single"}
    # worst arm: olmo0424 (two spikes in one run) over no_qk_norm (one)
    assert double == {"loss_curves", "grad_norm_curves", "layer_grad_heatmap_baseline",
                      "layer_grad_heatmap_worst_arm_olmo0424", "attn_logit_curves", "attn_logit_layers",
                      "log_z_curves", "embedding_norm_curves", "update_rms_and_eps", "lr_sensitivity",
                      "spike_scores", f"forest_{F.FINAL_EVAL_LOSS}", f"forest_{F.SPIKE_SCORE_GRAD_NORM}",
                      "forest_headline"}
    assert single == double and len(paths) == 2 * len(double)
    assert all(p.suffix == ".png" and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert {png_size(p)[0] for p in paths if p.parent == tmp_path} == {2160}
    assert {png_size(p)[0] for p in paths if p.parent == tmp_path / "single"} == {1050}
    assert reasons == {"growth_vs_width": "growth exponents for 1 width(s), need >= 2"}
    assert "growth_vs_width skipped" in caplog.text
    one_width = R.report_figures(small, out_dir=tmp_path / "d", formats=("pdf",), widths=("double",))
    assert {p.parent for p in one_width} == {tmp_path / "d"} and all(p.suffix == ".pdf" for p in one_width)
    with pytest.raises(ValueError, match="width"):
        R.report_figures(small, out_dir=tmp_path / "x", widths=("wide",))


def test_report_figures_skips_with_reasons(tmp_path, caplog):
    g = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0, 1), steps=60)
    g = F.GridData(g.name, g.runs, g.series[g.series["metric"] != M.LOGITS_LOG_Z_MEAN], g.dense.iloc[0:0],
                   g.spikes, g.params, baseline=None)
    reasons: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="reports.figures"):
        paths = R.report_figures(g, out_dir=tmp_path, reasons=reasons, formats=("png",), widths=("double",))
    stems = {p.stem for p in paths}
    assert {"loss_curves", "grad_norm_curves", "attn_logit_curves", "attn_logit_layers",
            "embedding_norm_curves"} == stems
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
    assert ax.get_title() == "Gradient norm" and "Grad-norm" in ax.get_ylabel()
    assert fig.skipped == {"loss panel": f"{F.SPIKE_SCORE_LOSS} is 0 in every run: no spikes"}
    assert fig.get_suptitle().count("is 0 in every run") == 1
    assert "not shown: loss panel (loss spike score is 0 in every run: no spikes)" in fig.get_suptitle()
    np.testing.assert_allclose([p.get_height() for p in ax.patches if p.get_gid() == "bar|no_qk_norm"],
                               [100.0 / 60 / 2])  # one spike in 60 points, seed mean of (1/60, 0)
    cmp = R.spike_scores_figure(compare_arms(two_seeds, n_boot=200), baseline="olmo2")
    assert [a.get_title() for a in cmp.axes] == ["Gradient norm"]
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
    notes = FS.forest_annotations(fig)
    assert set(notes) == {"no_qk_norm", "olmo0424"}
    assert all(n.endswith("  n=2") and "too few" not in n for n in notes.values())  # said once, above
    assert fig.get_suptitle().count("too few seeds") == 1 and "(n=2) for wilcoxon" in fig.get_suptitle()
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
    assert [ax.get_title() for ax in panels(fig)] == ["Training loss", "Gradient L2 norm", "Adam update RMS"]
    assert fig.skipped == {M.OPTIM_EPS_REGIME: "every value is 0"}
    assert "not shown: eps-regime share (every value is 0)" in fig.get_suptitle()
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


def test_what_was_left_out_for_one_reason_shares_it_in_the_title():
    fig, _ = D.new_figure("t")
    for what in ("Adam update RMS", "MLP output RMS"):
        D.skip(fig, what, "no sample with a baseline")
    D.skip(fig, "grad/norm", "no finite value")
    D.finish(fig, "title")
    assert fig.get_suptitle().split("\n", 1)[1].replace("\n", " ") == (
        "not shown: Adam update RMS, MLP output RMS (no sample with a baseline); gradient L2 norm "
        "(no finite value)")
