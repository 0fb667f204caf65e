"""Lead-lag of loss spikes (reports.leadlag) on series with precursors planted at known lags.

Four loss spikes at steps that are not multiples of 10 (so a signal sampled every 10 steps has
its lead quantised), one spike too early for a baseline, one within the horizon of another.
Before each: the global grad norm and layer 3's rise 5 steps ahead, layer 2's Adam update RMS
10 steps ahead, layer 0's update-gradient cosine drops 3 steps ahead (and layer 1's rises 8
steps ahead: the wrong way, never a precursor); max log Z jumps at the spike's own step (lead 0:
with it, not before it); the MLP output RMS is pure noise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports import frames as F
from reports import leadlag as L
from reports.figures import MissingData
from reports.figures_leadlag import leadlag_figure
from reports.report import build_report
from stability import metric_names as M
from tests.reports.factories import PRECURSOR_LAYERS, PRECURSORS, synthetic_grid

STEPS = 600
SPIKES = [253, 337, 421, 538]
EARLY, OVERLAPPING = 30, 345
N_LAYERS = 4


def plateau(x: np.ndarray, spikes: list[int], before: int, size: float, after: int = 2) -> None:
    """Add `size` to x from `before` steps ahead of each spike to `after` steps past it."""
    for s in spikes:
        x[s - before:s + after + 1] += size


def planted(seed: int = 0, update_every: int = 1) -> dict[str, dict[int, pd.Series]]:
    """{signal: {layer: series}} of one run, precursors planted before every spike in
    `SPIKES + [EARLY, OVERLAPPING]`; update RMS sampled every `update_every` steps."""
    rng = np.random.default_rng(seed)
    steps = np.arange(STEPS)
    every = [*SPIKES, EARLY, OVERLAPPING]

    def noise(loc: float, sd: float) -> np.ndarray:
        return loc + sd * rng.standard_normal(STEPS)

    grad = noise(1.0, 0.05)
    plateau(grad, every, 5, 1.0)
    layers = {i: noise(0.25, 0.0125) for i in range(N_LAYERS)}
    plateau(layers[3], every, 5, 0.5)
    update = {i: noise(0.5, 0.01) for i in range(N_LAYERS)}
    plateau(update[2], every, 10, 0.2, after=4)
    cosine = {i: noise(0.8, 0.01) for i in range(N_LAYERS)}
    plateau(cosine[0], every, 3, -0.2)
    plateau(cosine[1], every, 8, +0.2)  # a rise of the cosine is not its departure
    mlp = {i: noise(1.0, 0.1) for i in range(N_LAYERS)}
    log_z = 2.0 + 0.05 * np.random.default_rng(seed + 1000).standard_normal(STEPS)  # the others' draws kept
    plateau(log_z, every, 0, 1.0)
    sampled = steps % update_every == 0
    return {
        M.GRAD_NORM: {L.WHOLE: pd.Series(grad, steps), **{i: pd.Series(v, steps) for i, v in layers.items()}},
        M.UPDATE_RMS: {i: pd.Series(v[sampled], steps[sampled]) for i, v in update.items()},
        M.UPDATE_GRAD_COS: {i: pd.Series(v, steps) for i, v in cosine.items()},
        M.ACT_MLP_OUT_RMS: {i: pd.Series(v, steps) for i, v in mlp.items()},
        M.LOGITS_LOG_Z_MAX: {L.WHOLE: pd.Series(log_z, steps)},
    }


def grid_of(runs: dict[str, tuple[str, dict]], spike_steps: dict[str, list[int]]) -> F.GridData:
    """A GridData of these runs ({run id: (arm, signals)}): whole-model series in MLflow, per-layer
    ones in the dense artifact; loss spikes fired by two rules, plus a grad-norm-only event."""
    series = [pd.DataFrame(columns=list(F.SERIES_COLUMNS))]
    dense, spikes = [pd.DataFrame(columns=list(F.DENSE_COLUMNS))], []
    for rid, (_, signals) in runs.items():
        for key, layers in signals.items():
            for layer, s in layers.items():
                if layer == L.WHOLE:
                    series.append(pd.DataFrame({F.RUN_ID: rid, "step": s.index, "metric": key,
                                                "value": s.values}))
                else:
                    dense.append(pd.DataFrame({F.RUN_ID: rid, "step": s.index, "key": key, "layer": layer,
                                               "head": -1, "value": s.values}))
        for step in spike_steps.get(rid, []):
            for series_name in (f"{M.TRAIN_CE_LOSS}@olmo2", f"{M.TRAIN_CE_LOSS}@online"):
                spikes.append({F.RUN_ID: rid, "step": step, "series": series_name, "sigma": 9.0})
        spikes.append({F.RUN_ID: rid, "step": 150, "series": f"{M.GRAD_NORM}@olmo2", "sigma": 12.0})
    frame = pd.DataFrame(spikes).reindex(columns=list(F.SPIKE_COLUMNS))
    runs_frame = F.typed_runs(pd.DataFrame({F.RUN_ID: list(runs), F.ARM: [a for a, _ in runs.values()],
                                            F.STATUS: "finished"}))
    return F.GridData("planted", runs_frame, pd.concat(series, ignore_index=True),
                      pd.concat(dense, ignore_index=True), frame, baseline=None)


ALL_SPIKES = sorted([*SPIKES, EARLY, OVERLAPPING])


def leaders_of(per_signal: pd.DataFrame, key: str) -> pd.DataFrame:
    return per_signal[per_signal["signal"] == key].set_index("spike")


# ------------------------------------------------------------------------------------ onsets
def test_planted_leads_layers_and_the_first_signal_every_step():
    per_signal, spikes = L.run_leadlag(planted(), ALL_SPIKES)
    assert spikes.set_index("step")["status"].to_dict() == {
        EARLY: L.TOO_EARLY, 253: L.ANALYSED, 337: L.ANALYSED, OVERLAPPING: L.OVERLAPPING,
        421: L.ANALYSED, 538: L.ANALYSED}
    assert sorted(per_signal["spike"].unique()) == SPIKES
    grad, update, cosine, noise = (leaders_of(per_signal, k) for k in
                                   (M.GRAD_NORM, M.UPDATE_RMS, M.UPDATE_GRAD_COS, M.ACT_MLP_OUT_RMS))
    assert grad["lead"].tolist() == [5.0] * 4 and grad["layer"].tolist() == [3] * 4
    assert update["lead"].tolist() == [10.0] * 4 and update["layer"].tolist() == [2] * 4
    assert cosine["lead"].tolist() == [3.0] * 4 and cosine["layer"].tolist() == [0] * 4  # not layer 1's rise
    assert noise["lead"].isna().all() and (noise["status"] == L.IN_RANGE).all()
    log_z = leaders_of(per_signal, M.LOGITS_LOG_Z_MAX)
    assert log_z["lead"].tolist() == [0.0] * 4 and log_z["layer"].isna().all()  # the same step
    assert (update["sigma"] > 10).all() and (noise["sigma"] < L.Z).all()
    assert per_signal.loc[per_signal["first"], "signal"].tolist() == [M.UPDATE_RMS] * 4
    analysed = spikes[spikes["status"] == L.ANALYSED]
    assert analysed["first_signal"].tolist() == [M.UPDATE_RMS] * 4
    assert analysed["first_lead"].tolist() == [10.0] * 4 and analysed["first_layer"].tolist() == [2] * 4


def test_every_series_row_of_a_spike():
    rows = L.onsets(planted(), [253])
    grad = rows[rows["signal"] == M.GRAD_NORM].set_index("layer")
    assert grad.loc[L.WHOLE, "onset"] == grad.loc[3, "onset"] == 248.0
    assert grad.loc[[0, 1, 2], "status"].tolist() == [L.IN_RANGE] * 3
    assert grad.loc[[0, 1, 2], "lead"].isna().all() and (grad["cadence"] == 1.0).all()
    cos = rows[rows["signal"] == M.UPDATE_GRAD_COS].set_index("layer")
    assert cos.loc[0, "lead"] == 3.0 and cos.loc[1, "status"] == L.IN_RANGE
    assert L.onsets(planted(), [253], directions={M.UPDATE_GRAD_COS: L.UP}).query(
        "signal == @M.UPDATE_GRAD_COS and layer == 1")["lead"].item() == 8.0  # read as a rise: 8 ahead


def test_a_signal_sampled_every_10_steps_has_its_lead_quantised():
    per_signal, _ = L.run_leadlag(planted(update_every=10), ALL_SPIKES)
    update = leaders_of(per_signal, M.UPDATE_RMS)
    # it leaves its range at the first sample at or after 10 steps ahead of the spike
    quantised = [s - math.ceil((s - 10) / 10) * 10 for s in SPIKES]
    assert update["lead"].tolist() == quantised == [3.0, 7.0, 1.0, 8.0]
    assert (update["cadence"] == 10.0).all() and (update["layer"] == 2).all()
    first = per_signal[per_signal["first"]].set_index("spike")["signal"]
    assert first.tolist() == [M.GRAD_NORM, M.UPDATE_RMS, M.GRAD_NORM, M.UPDATE_RMS]  # 5 ahead vs 3, 7, 1, 8


def test_nan_and_inf_points():
    steps = np.arange(300)
    x = 1.0 + 0.05 * np.random.default_rng(3).standard_normal(300)
    x[[100, 150, 200]] = np.nan  # in the baseline: skipped
    x[250 - 5:253] += 1.0
    x[250 - 5] = np.nan  # the first point of the rise is missing: the next one is the onset
    y = x.copy()
    y[250 - 7] = np.inf  # +inf is outside any finite range
    z = x.copy()
    z[250 - 7] = -np.inf  # for a signal that departs upward, -inf is no departure
    rows = L.onsets({"a": {L.WHOLE: pd.Series(x, steps)}, "b": {L.WHOLE: pd.Series(y, steps)},
                     "c": {L.WHOLE: pd.Series(z, steps)}}, [250]).set_index("signal")
    assert rows.loc["a", "lead"] == 4.0 and rows.loc["c", "lead"] == 4.0
    assert rows.loc["b", "lead"] == 7.0 and rows.loc["b", "sigma"] == np.inf
    lone = L.onsets({"a": {L.WHOLE: pd.Series([np.nan] * 300, steps)}}, [250])
    assert lone["status"].tolist() == [L.NO_BASELINE]
    sparse = L.onsets({"a": {L.WHOLE: pd.Series(x[:200], steps[:200])}}, [250])  # nothing in the window
    assert sparse["status"].tolist() == [L.NO_SAMPLE]


def test_clusters_and_loss_spikes_from_spikes_csv():
    # chained: 130 is within 20 steps of 110, which is within 20 of 100
    assert L.clusters([100, 130, 110, 200, 221, 130], horizon=20) == ([100, 200, 221], [110, 130])
    grid = grid_of({"r": ("a", planted())}, {"r": [253, 337]})
    assert L.loss_spike_steps(grid.spikes) == {"r": [253, 337]}  # two rules, one spike; grad norm not one
    rewound = grid.spikes.assign(action=grid.spikes["step"].map(lambda s: "rewind" if s == 337 else np.nan))
    assert L.loss_spike_steps(rewound) == {"r": [253]}  # the series hold the re-run steps, not 337's


# ------------------------------------------------------------------------------------ aggregates
def test_grid_aggregates_and_the_sentence_exactly():
    runs = {"r0": ("a", planted(0)), "r1": ("a", planted(1, update_every=10)), "r2": ("b", planted(2))}
    grid = grid_of(runs, {rid: ALL_SPIKES for rid in runs})
    lead = L.grid_leadlag(grid)
    assert lead.n_loss_spikes == 18 and (lead.spikes["status"] == L.ANALYSED).sum() == 12
    summary = L.summarize(lead).set_index([F.ARM, "signal"])
    a = summary.loc["a"]
    # r0: update RMS first at all 4 (10 ahead); r1: grad norm first at 2, update RMS at 2 (3, 7, 1, 8)
    assert a.loc[M.UPDATE_RMS, ["n_spikes", "n", "preceded", "first", "median_lead", "leading_layer",
                                "layer_share", "cadence"]].tolist() == [8, 8, 1.0, 0.75, 9.0, 2, 1.0, 10.0]
    assert a.loc[M.GRAD_NORM, ["preceded", "first", "median_lead", "leading_layer", "cadence"]].tolist() == \
        [1.0, 0.25, 5.0, 3, 1.0]
    assert a.loc[M.UPDATE_GRAD_COS, ["preceded", "first", "median_lead", "leading_layer"]].tolist() == \
        [1.0, 0.0, 3.0, 0]
    assert a.loc[M.ACT_MLP_OUT_RMS, ["n", "preceded", "first"]].tolist() == [8, 0.0, 0.0]
    # max log Z left its range at the spike's own step: lead 0 is not ahead
    assert a.loc[M.LOGITS_LOG_Z_MAX, ["n", "preceded", "first", "same_step"]].tolist() == [8, 0.0, 0.0, 1.0]
    assert a.loc[M.UPDATE_RMS, "same_step"] == 0.0
    assert np.isnan(a.loc[M.LOGITS_LOG_Z_MAX, "median_lead"])
    assert not a.loc[M.ATTN_LOGIT_MAX, "logged"] and a.loc[M.ATTN_LOGIT_MAX, "n"] == 0
    by_arm = dict(tuple(L.summarize(lead).groupby(F.ARM)))
    assert L.group_sentence(by_arm["a"]) == ("Adam update RMS led in 100% of 8 loss spikes, median 9 steps "
                                             "ahead; layer 2 led in 100% of those")
    assert L.group_sentence(by_arm["b"]) == ("Adam update RMS led in 100% of 4 loss spikes, median 10 steps "
                                             "ahead; layer 2 led in 100% of those")
    calm = by_arm["a"].assign(preceded=0.0)  # nothing ahead: the sentence says what rose with the loss
    assert L.group_sentence(calm) == ("no signal left its range before any of 8 loss spikes; max log Z rose "
                                      "at the spike's own step in 100% of them")
    assert L.not_logged(by_arm["b"]) == ["max g²/v ratio", "max attention logit", "mean log Z",
                                         "attention output RMS"]
    whole = L.summarize(lead, by=None).set_index("signal")
    assert whole.loc[M.UPDATE_RMS, "n_spikes"] == 12
    assert whole.loc[M.UPDATE_RMS, "first"] == pytest.approx(10 / 12)
    per_run = L.summarize(lead, by=F.RUN_ID).set_index([F.RUN_ID, "signal"])
    assert per_run.loc[("r1", M.UPDATE_RMS), "median_lead"] == 5.0  # median of 3, 7, 1, 8
    assert per_run.loc[("r1", M.GRAD_NORM), "first"] == 0.5


def test_pure_noise_is_rarely_a_precursor():
    runs = {f"r{i}": ("a", {M.ACT_MLP_OUT_RMS: planted(100 + i)[M.ACT_MLP_OUT_RMS]}) for i in range(20)}
    grid = grid_of(runs, {rid: SPIKES for rid in runs})
    row = L.summarize(L.grid_leadlag(grid)).set_index("signal").loc[M.ACT_MLP_OUT_RMS]
    assert row["n"] == 80 and row["preceded"] <= 0.05
    loose = L.summarize(L.grid_leadlag(grid, z=2.0)).set_index("signal").loc[M.ACT_MLP_OUT_RMS]
    assert loose["preceded"] > 0.5  # the same noise at 2 sigma: the threshold is what keeps it out


def test_a_grid_without_loss_spikes_and_a_run_without_signals():
    grid = synthetic_grid(arms=("a",), seeds=(0,), steps=60, spike_steps={("a", 0, 3e-3): [40]})
    lead = L.grid_leadlag(grid)  # a grad-norm spike only
    assert lead.n_loss_spikes == 0 and not len(lead.signals) and not len(L.summarize(lead))
    assert not len(L.aligned_means(L.grid_event_aligned(grid, lead)))
    with pytest.raises(MissingData, match="no loss spike"):
        leadlag_figure(grid, lead)
    per_signal, spikes = L.run_leadlag({}, [100, 300])
    assert not len(per_signal) and spikes["status"].tolist() == [L.NO_SIGNALS] * 2


# ------------------------------------------------------------------------------------ event-aligned
def test_event_aligned_averages_show_each_rise_at_its_lag():
    aligned = L.event_aligned(planted(), SPIKES, horizon=20, after=5)
    assert set(aligned["offset"]) == set(range(-20, 6)) and aligned["spike"].nunique() == 4
    means = L.aligned_means(aligned.assign(arm="a")).set_index(["signal", "offset"])["mean"]
    for key, lag in ((M.GRAD_NORM, 5), (M.UPDATE_RMS, 10), (M.UPDATE_GRAD_COS, 3)):
        assert means.loc[(key, -lag)] > 10 and means.loc[(key, 0)] > 10, key  # a drop of the cosine is up
        assert abs(means.loc[(key, -lag - 1)]) < L.Z, key
    assert (means.loc[M.ACT_MLP_OUT_RMS].abs() < L.Z).all()


def test_figure_a_panel_per_family_a_line_per_arm_and_signal():
    runs = {"r0": ("a", planted(0)), "r1": ("b", planted(1))}
    grid = grid_of(runs, {rid: SPIKES for rid in runs})
    fig = leadlag_figure(grid, width="single")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Gradient norm", "Adam update: RMS;\ncosine drop (dashed)", "Max log Z",
                      "MLP output RMS"]
    gids = {a.get_gid() for a in fig.findobj(lambda a: isinstance(a.get_gid(), str))}
    assert {f"mean|{arm}|{key}" for arm in "ab" for key in (M.GRAD_NORM, M.UPDATE_RMS, M.UPDATE_GRAD_COS,
                                                            M.ACT_MLP_OUT_RMS)} <= gids
    assert {"spike_line", "threshold"} <= gids and len(fig.legends) == 1
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "a, 4 loss spikes", "b, 4 loss spikes", "loss spike", "onset threshold (5 σ)"}


# ------------------------------------------------------------------------------------ the report
def test_the_report_has_the_section_table_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr("reports.report.report_figures", lambda *a, **k: [])  # the other figures: elsewhere
    lr = 3e-3
    grid = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0, 1), steps=200,
                          loss_spike_steps={("olmo2", 0, lr): [120, 170], ("no_qk_norm", 0, lr): [30],
                                            ("no_qk_norm", 1, lr): [100, 150, 160]})
    report = build_report(grid, tmp_path, n_boot=200, widths=("double",))
    summary = (tmp_path / "summary.md").read_text()
    section = summary.split("## What came before the loss spikes\n")[1].split("\n## ")[0]
    assert section.startswith("\n6 loss spikes in 3 runs: 4 analysed, 1 within 20 steps after an earlier one "
                              "(part of its event), 1 too early for a baseline. Onset:")
    lead, layer = PRECURSORS[M.UPDATE_RMS], PRECURSOR_LAYERS[M.UPDATE_RMS]
    for arm in ("olmo2", "no\\_qk\\_norm"):
        assert (f"- **{arm}**: Adam update RMS led in 100% of 2 loss spikes, median {lead} steps ahead; "
                f"layer {layer} led in 100% of those.") in section
    assert "| olmo2 | grad norm | 2 | 100% | 0% | 0% | 5 | 1 (100%) | every step |" in section
    assert "not logged in any arm: update-gradient cosine" in section
    assert section.count("![leadlag](figures/leadlag.png)") == 1 and summary.count("figures/leadlag.png") == 1
    table = pd.read_csv(tmp_path / "tables" / "leadlag.csv").set_index(["arm", "signal"])
    assert table.loc[("olmo2", M.GRAD_NORM), ["preceded", "median_lead", "leading_layer"]].tolist() == \
        [1.0, PRECURSORS[M.GRAD_NORM], PRECURSOR_LAYERS[M.GRAD_NORM]]
    assert {p.name for p in report.paths if p.stem == "leadlag"} == {
        "leadlag.png", "leadlag.pdf", "leadlag.md", "leadlag.tex", "leadlag.csv"}
    assert (tmp_path / "figures" / "leadlag.png").read_bytes()[:4] == b"\x89PNG"
    assert "`tables/leadlag`" in summary and "leadlag" not in report.skipped
