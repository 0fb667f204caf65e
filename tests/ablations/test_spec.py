"""Grid specs: cells, validation messages, bundled studies and the plan (no training)."""

from __future__ import annotations

import math
import textwrap

import pytest

import model as model_lib
from ablations.plan import CPU_FLOPS, format_plan, plan_rows, plan_totals
from ablations.spec import GRIDS_DIR, Cell, GridSpec, bundled_specs, load_spec, parse_spec
from model.config import ConfigError
from model.size import flops_per_token, param_count
from stability.config import config_hash
from stability.recipes import run_recipe_of

SPEC = """
name = "g"
preset = "olmo2-tiny"
baseline = "olmo2"
seeds = [0, 1, 2]
lrs = [1e-3, 3e-3]

[base]
train.batch_size = 4
schedule.warmup_steps = 2

[budget]
steps = 7

[resources]
cpus = 1

[arms.olmo2]

[arms.no_qk_norm]
model.qk_norm = "none"

[arms.no_z_loss]
loss.z_loss = 0.0
"""


def write(tmp_path, text: str, name: str = "spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def spec(tmp_path) -> GridSpec:
    return load_spec(write(tmp_path, SPEC))


# ------------------------------------------------------------------------------------ cells


def test_spec_fields(spec: GridSpec):
    assert spec.name == "g" and spec.preset == "olmo2-tiny" and spec.baseline == "olmo2"
    assert spec.seeds == [0, 1, 2] and spec.lrs == [1e-3, 3e-3]
    assert list(spec.arms) == ["olmo2", "no_qk_norm", "no_z_loss"]
    assert spec.arms["no_qk_norm"] == {"model": {"qk_norm": "none"}}
    assert spec.budget == {"steps": 7} and spec.resources == {"cpus": 1}


def test_cells_count_order_and_configs(spec: GridSpec):
    cells = spec.cells()
    assert len(cells) == 3 * 3 * 2
    assert all(isinstance(c, Cell) for c in cells)
    expected = [(a, s, lr) for a in spec.arms for s in (0, 1, 2) for lr in (1e-3, 3e-3)]
    assert [(c.arm, c.seed, c.lr) for c in cells] == expected
    for c in cells:
        cfg = c.config
        assert cfg.train.seed == c.seed and cfg.optim.lr == c.lr
        assert cfg.train.steps == 7 and cfg.train.batch_size == 4 and cfg.schedule.warmup_steps == 2
        assert cfg.tracking.experiment == "g"
        assert cfg.tracking.run_name == f"g/{c.arm}/s{c.seed}/lr{c.lr:g}" == c.run_name
        assert cfg.preset == "olmo2-tiny"
        assert cfg.model.qk_norm == ("none" if c.arm == "no_qk_norm" else "full")
        assert cfg.loss.z_loss == (0.0 if c.arm == "no_z_loss" else 1e-5)
        assert c.cell_id == config_hash(cfg.to_dict())[:12]
    assert cells[0].run_name == "g/olmo2/s0/lr0.001"


def test_same_seed_same_train_seed_across_arms(spec: GridSpec):
    by_seed: dict[int, set[int]] = {}
    for c in spec.cells():
        by_seed.setdefault(c.seed, set()).add(c.config.train.seed)
    assert by_seed == {0: {0}, 1: {1}, 2: {2}}


def test_cell_ids_stable_and_distinct(tmp_path, spec: GridSpec):
    ids = [c.cell_id for c in spec.cells()]
    again = [c.cell_id for c in load_spec(write(tmp_path, SPEC, "copy.toml")).cells()]
    assert ids == again
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 12 for i in ids)


def test_cells_are_independent_objects(spec: GridSpec):
    cells = spec.cells()
    cells[0].config.model.d_model = 999
    assert all(c.config.model.d_model == 128 for c in cells[1:])
    assert spec.cells()[0].config.model.d_model == 128


def test_no_lrs_uses_resolved_lr_and_tokens_budget(tmp_path):
    text = SPEC.replace("lrs = [1e-3, 3e-3]\n", "").replace("steps = 7", "tokens = 1000")
    text = text.replace("[arms.no_z_loss]", "[arms.no_z_loss]\noptim.lr = 5e-3")
    cells = load_spec(write(tmp_path, text)).cells()
    assert len(cells) == 3 * 3
    # olmo2-tiny: lr 3e-3, seq_len 64; base batch 4 -> ceil(1000 / 256) = 4 steps
    assert {c.lr for c in cells if c.arm != "no_z_loss"} == {3e-3}
    assert {c.lr for c in cells if c.arm == "no_z_loss"} == {5e-3}
    assert {c.config.train.steps for c in cells} == {math.ceil(1000 / (4 * 64))}
    assert cells[0].run_name == "g/olmo2/s0/lr0.003"


def test_no_budget_keeps_config_steps(tmp_path):
    text = SPEC.replace("[budget]\nsteps = 7\n", "").replace("train.batch_size = 4", "train.steps = 11")
    cells = load_spec(write(tmp_path, text)).cells()
    assert {c.config.train.steps for c in cells} == {11}


def test_overrides_edit_the_spec(tmp_path):
    spec = load_spec(write(tmp_path, SPEC), overrides=['preset="olmo2-small"', "seeds=[5]",
                                                      "budget.steps=3"])
    cells = spec.cells()
    assert spec.preset == "olmo2-small" and len(cells) == 3 * 1 * 2
    assert {c.config.train.steps for c in cells} == {3} and {c.seed for c in cells} == {5}
    assert cells[0].config.model.vocab_size == 2048 and cells[0].config.train.batch_size == 4


def test_arm_equal_to_baseline_is_an_error(tmp_path):
    """Under olmo0424, no_qk_norm changes nothing: the grid would run the same cells twice."""
    with pytest.raises(ConfigError, match=r"^arms.no_qk_norm: resolves to the same config as arm 'olmo2'"):
        load_spec(write(tmp_path, SPEC), overrides=['preset="olmo0424-tiny"'])


# ------------------------------------------------------------------------------- validation

BAD = [
    # (edit of SPEC as (old, new), expected start of the message)
    (("qk_norm = \"none\"", "qk_normm = \"none\""),
     "arms.no_qk_norm.model.qk_normm: unknown key (did you mean 'qk_norm'?"),
    (("qk_norm = \"none\"", "qk_norm = \"sometimes\""), "arms.no_qk_norm.model.qk_norm: 'sometimes' is not"),
    (("qk_norm = \"none\"", "qk_norm = 3"), "arms.no_qk_norm.model.qk_norm: expected a string, got 3"),
    (("loss.z_loss = 0.0", "loss.z_loss = -1.0"), "arms.no_z_loss.loss.z_loss: must be >= 0"),
    (("loss.z_loss = 0.0", "model.n_heads = 3"), "arms.no_z_loss.model.n_heads: 3 does not divide"),
    (("baseline = \"olmo2\"", "baseline = \"olmo3\""),
     "baseline: 'olmo3' is not an arm (arms: olmo2, no_qk_norm, no_z_loss)"),
    (("baseline = \"olmo2\"\n", ""), "baseline: required"),
    (("seeds = [0, 1, 2]", "seeds = []"), "seeds: must be a non-empty list of distinct integers >= 0"),
    (("seeds = [0, 1, 2]", "seeds = [0, 0]"), "seeds: must be a non-empty list of distinct integers >= 0"),
    (("seeds = [0, 1, 2]", "seeds = [-1]"), "seeds: must be a non-empty list of distinct integers >= 0"),
    (("seeds = [0, 1, 2]", "seeds = [1.5]"), "seeds[0]: expected an integer, got 1.5"),
    (("seeds = [0, 1, 2]", "seeds = 3"), "seeds: expected a list (an integer each), got 3"),
    (("seeds = [0, 1, 2]\n", ""), "seeds: must be a non-empty list of distinct integers >= 0"),
    (("lrs = [1e-3, 3e-3]", "lrs = [1e-3, \"fast\"]"), "lrs[1]: expected a number, got 'fast'"),
    (("lrs = [1e-3, 3e-3]", "lrs = [1e-3, -1.0]"), "lrs[1]: must be > 0"),
    (("lrs = [1e-3, 3e-3]", "lrs = [1e-3, 1e-3]"), "lrs: values must be distinct"),
    (("lrs = [1e-3, 3e-3]", "lrs = []"), "lrs: must be a non-empty list"),
    (("steps = 7", "steps = 7\ntokens = 100"), "budget: give steps or tokens, not both"),
    (("steps = 7", "stepz = 7"), "budget.stepz: unknown key (did you mean 'steps'?"),
    (("steps = 7", "steps = 0"), "budget.steps: expected a positive integer"),
    (("steps = 7", ""), "budget: give steps = N or tokens = N"),
    (("cpus = 1", "cpus = 0"), "resources.cpus: expected an integer >= 1"),
    (("cpus = 1", "gpu = 1"), "resources.gpu: unknown key (did you mean 'gpus'?"),
    (("name = \"g\"", "name = \"g\"\nbasline = 1"), "basline: unknown key (did you mean 'baseline'?"),
    (("name = \"g\"", "name = \"a b\""), "name: must be a non-empty string of [A-Za-z0-9._-]"),
    (("name = \"g\"\n", ""), "name: required"),
    (("preset = \"olmo2-tiny\"", "preset = \"olmo2-huge\""), "preset: unknown 'olmo2-huge'"),
    (("train.batch_size = 4", "train.batch_sise = 4"),
     "base.train.batch_sise: unknown key (did you mean 'batch_size'?"),
    (("train.batch_size = 4", "train.seq_len = 100000"),
     "base.train.seq_len: 100000 exceeds model.max_seq_len"),
    (("train.batch_size = 4", "train.seed = 3"), "base.train.seed: set by the grid's seeds"),
    (("train.batch_size = 4", "preset = \"olmo2-small\""), "base.preset: set the preset once"),
    (("loss.z_loss = 0.0", "optim.lr = 1.0"), "arms.no_z_loss.optim.lr: set per cell by the grid's lrs"),
    (("loss.z_loss = 0.0", "train.steps = 9"), "arms.no_z_loss.train.steps: set by the grid's [budget]"),
    (("loss.z_loss = 0.0", "tracking.run_name = \"x\""), "arms.no_z_loss.tracking.run_name: set per cell"),
    (("loss.z_loss = 0.0", "model.qk_norm = \"full\""),
     "arms.no_z_loss: resolves to the same config as arm 'olmo2'"),
    (("[arms.no_z_loss]", "[arms.\"no.z\"]"), "arms.no.z: arm names are [A-Za-z0-9_-]"),
    (("[arms.no_z_loss]\nloss.z_loss = 0.0", "[arms]\nno_z_loss = 3"),
     "arms.no_z_loss: expected a table of RunConfig overrides, got 3"),
    (("[arms.no_z_loss]", "[arms.olmo2]"), "SPEC: not valid TOML: arm 'olmo2' is defined twice"),
    (("name = \"g\"", "name = "), "SPEC: not valid TOML: Invalid value (at line 2, column 8)"),
]


@pytest.mark.parametrize("edit,expected", BAD, ids=[e for _, e in BAD])
def test_validation_errors(tmp_path, edit, expected):
    old, new = edit
    assert old in SPEC
    path = write(tmp_path, SPEC.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(expected), msg


def test_no_arms(tmp_path):
    text = SPEC[: SPEC.index("[arms.olmo2]")]
    with pytest.raises(ConfigError, match=r"^arms: at least one arm needed"):
        load_spec(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^SPEC: file '.*nope.toml' does not exist$"):
        load_spec(tmp_path / "nope.toml")


def test_duplicate_arm_as_inline_keys(tmp_path):
    text = SPEC.replace("[arms.no_z_loss]\nloss.z_loss = 0.0", "[arms]\nx = {}\nx = {}")
    with pytest.raises(ConfigError, match=r"^SPEC: not valid TOML: a key or table is given twice"):
        load_spec(write(tmp_path, text))


def test_arm_error_not_blamed_on_base(tmp_path):
    """A base value every arm fixes is fine; a base value that breaks is reported as base."""
    text = SPEC.replace("train.batch_size = 4", "train.seq_len = 300")  # tiny max_seq_len 256
    with pytest.raises(ConfigError, match=r"^base\.train\.seq_len: 300 exceeds"):
        load_spec(write(tmp_path, text))
    text = text.replace("[arms.olmo2]", "[arms.olmo2]\nmodel.max_seq_len = 512")
    with pytest.raises(ConfigError, match=r"^base\.train\.seq_len"):
        load_spec(write(tmp_path, text))  # the other arms still inherit the bad value
    for arm in ("no_qk_norm", "no_z_loss"):
        text = text.replace(f"[arms.{arm}]", f"[arms.{arm}]\nmodel.max_seq_len = 512")
    assert len(load_spec(write(tmp_path, text)).cells()) == 18


# --------------------------------------------------------------------------- bundled specs


def test_bundled_specs_load():
    names = {p.stem for p in bundled_specs()}
    assert {"quick", "olmo2_section3", "lr_sensitivity"} <= names
    for path in bundled_specs():
        spec = load_spec(path)
        assert spec.name == path.stem
        assert spec.baseline in spec.arms
        assert spec.description


def test_quick_spec():
    spec = load_spec(GRIDS_DIR / "quick.toml")
    assert load_spec("quick").cells()[0].cell_id == spec.cells()[0].cell_id  # bundled name lookup
    cells = spec.cells()
    assert len(spec.arms) == 5 and spec.seeds == [0, 1] and len(cells) == 10
    assert spec.preset == "olmo2-small" and spec.baseline == "olmo2"
    for c in cells:
        assert c.config.train.steps == 300 and c.lr == 3e-2 and c.config.schedule.warmup_steps == 10
    recipes = {c.arm: run_recipe_of(c.config) for c in cells}
    assert recipes["olmo2"] == "olmo2"
    assert recipes["olmo0424"] == "olmo0424"  # the whole before recipe, not a partial one
    assert all(recipes[a] == "custom" for a in ("no_qk_norm", "pre_norm", "no_z_loss"))


def test_section3_spec():
    spec = load_spec(GRIDS_DIR / "olmo2_section3.toml")
    assert spec.preset == "olmo2-190M" and spec.seeds == [0, 1, 2] and len(spec.arms) == 12
    cells = {c.arm: c.config for c in spec.cells() if c.seed == 0}
    assert cells["olmo2"].schedule.warmup_steps == 100 and cells["olmo2"].train.steps == 2000
    assert run_recipe_of(cells["olmo0424"]) == "olmo0424"
    assert cells["no_qk_norm_clip8"].model.clip_qkv == 8.0
    assert cells["repeats"].data.inject_repeats == 0.02 and not cells["repeats"].data.ngram_filter
    assert cells["repeats_filtered"].data.ngram_filter
    bigger = load_spec(GRIDS_DIR / "olmo2_section3.toml", overrides=['preset="olmo2-1B_v2"'])
    assert bigger.cells()[0].config.model.d_model == 2048


def test_lr_sensitivity_spec():
    spec = load_spec(GRIDS_DIR / "lr_sensitivity.toml")
    cells = spec.cells()
    assert spec.baseline == "qknorm_zloss" and len(spec.arms) == 4
    assert spec.lrs == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    assert len(cells) == 4 * 2 * 7
    base = cells[0].config
    assert base.model.qk_norm == "per_head" and base.model.norm_type == "layernorm"
    assert base.model.block == "pre_norm" and base.loss.z_loss == 1e-4
    assert base.optim.independent_weight_decay and base.optim.weight_decay == 1e-4
    arms = {c.arm: (c.config.model.qk_norm, c.config.loss.z_loss) for c in cells}
    assert arms == {"qknorm_zloss": ("per_head", 1e-4), "qknorm_nozloss": ("per_head", 0.0),
                    "noqknorm_zloss": ("none", 1e-4), "noqknorm_nozloss": ("none", 0.0)}


# ------------------------------------------------------------------------------------ plan


def test_plan_rows_and_totals(spec: GridSpec):
    rows = plan_rows(spec)
    cells = spec.cells()
    assert [r["cell_id"] for r in rows] == [c.cell_id for c in cells]
    m = model_lib.Transformer(cells[0].config.model)  # no init needed for counts
    for r in rows:
        assert set(r) == {"arm", "seed", "lr", "cell_id", "steps", "tokens", "params", "est_flops"}
        assert r["steps"] == 7 and r["tokens"] == 7 * 4 * 64
        if r["arm"] == "olmo2":
            assert r["params"] == m.num_params()
            assert r["est_flops"] == pytest.approx(r["tokens"] * m.flops_per_token(64))
    t = plan_totals(rows)
    assert t["cells"] == 18 and t["tokens"] == 18 * 7 * 4 * 64
    assert t["cpu_seconds"] == pytest.approx(t["flops"] / CPU_FLOPS)
    text = format_plan(spec)
    assert "total: 18 cells (3 arms x 3 seeds x 2 lrs)" in text
    assert len(text.splitlines()) == 1 + 1 + 18 + 1 + 1
    assert text.splitlines()[-1] == "per cell: 1 rank, 1 CPU thread"


def test_quick_plan_is_minutes():
    t = plan_totals(plan_rows(load_spec(GRIDS_DIR / "quick.toml")))
    assert t["tokens"] == 10 * 300 * 8 * 128
    assert 60 < t["cpu_seconds"] < 15 * 60


def test_big_preset_plan_is_analytic():
    spec = load_spec(GRIDS_DIR / "olmo2_section3.toml", overrides=['preset="olmo2-7B"', "seeds=[0]"])
    rows = plan_rows(spec)  # must not allocate 7B parameters
    assert 6.5e9 < rows[0]["params"] < 8e9
    assert "PFLOPs" in format_plan(spec)


def test_plan_sizes_are_model_sizes_closed_form():
    spec = load_spec(GRIDS_DIR / "olmo2_section3.toml", overrides=["seeds=[0]"])
    rows = plan_rows(spec)
    cfg = spec.cells()[0].config.model
    assert rows[0]["params"] == param_count(cfg)
    assert rows[0]["est_flops"] == pytest.approx(rows[0]["tokens"] * flops_per_token(cfg, 1024))


def test_plan_states_each_cells_resources_and_ranks():
    data = {"name": "res", "preset": "olmo2-tiny", "baseline": "a", "seeds": [0],
            "base": {"train": {"batch_size": 4}}, "resources": {"cpus": 2, "ranks": 2, "time_min": 30},
            "arms": {"a": {}}}
    text = format_plan(parse_spec(data))
    assert text.splitlines()[-1] == ("per cell: 2 ranks (torchrun, FSDP2; train.batch_size is the "
                                     "global batch), 2 CPU threads, 30 min limit")
    del data["resources"]
    assert "per cell" not in format_plan(parse_spec(data))
