"""RunConfig: layering, typed overrides and one-line errors naming the key (exit 2 from the CLI)."""

from __future__ import annotations

import pytest

from model.config import ConfigError
from stability.cli import main
from stability.config import RunConfig, from_dict, load_config, parse_override, run_preset, to_toml
from stability.recipes import run_recipe_of


def test_layering_preset_file_set(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "olmo2-tiny"\n[optim]\nlr = 1e-3\n[train]\nsteps = 7\n')
    cfg = load_config(config_file=f, overrides=["train.steps=9", "model.clip_qkv=4",
                                                "optim.betas=[0.9, 0.99]"])
    assert cfg.preset == "olmo2-tiny"
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 9
    assert cfg.model.clip_qkv == 4.0 and isinstance(cfg.model.clip_qkv, float)
    assert cfg.optim.betas == [0.9, 0.99]
    assert load_config("olmo2-tiny", overrides=["model.clip_qkv=null"]).model.clip_qkv is None


def test_toml_round_trip():
    cfg = load_config("olmo0424-tiny", overrides=["optim.skip_step=true"])
    import tomllib

    again = from_dict(tomllib.loads(to_toml(cfg)))
    assert again == cfg


def test_parse_override_strings_and_numbers():
    assert parse_override("data.corpus=/tmp/x.txt") == {"data": {"corpus": "/tmp/x.txt"}}
    assert parse_override("optim.lr = 3e-4") == {"optim": {"lr": 3e-4}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1e-3", "optim.lrr: unknown key (did you mean 'lr'?"),
        ("optimm.lr=1e-3", "optimm: unknown key (did you mean 'optim'?"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.lr=-1", "optim.lr: must be > 0"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("optim.skip_step=1", "optim.skip_step: expected a bool"),
        ("model.block=sandwich", "model.block: 'sandwich' is not one of (pre_norm, post_norm, "
                                 "reordered_norm, peri_norm)"),
        ("model.qk_norm=yes", "model.qk_norm: 'yes' is not one of (none, full, per_head)"),
        ("model.n_heads=5", "model.n_heads: 5 does not divide d_model=128"),
        ("schedule.kind=step", "schedule.kind: 'step' is not one of (cosine, linear, constant)"),
        ("train.seq_len=100000", "train.seq_len: 100000 exceeds model.max_seq_len"),
        ("optim.betas=[0.9]", "optim.betas: need two values"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("olmo2-tiny", overrides=[override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_xformers_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention: 'xformers' needs a CUDA device"):
        load_config("olmo2-tiny", overrides=["model.attention=xformers", "train.device=cpu"])


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError, match="preset: unknown 'olmo3-tiny' .*olmo2-tiny"):
        load_config("olmo3-tiny")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "olmo2-tiny", "--set", "optim.epss=1"],
        ["train", "--preset", "olmo2-tiny", "--set", "model.init=xavier"],
        ["train", "--preset", "nope"],
        ["train", "--config", "missing.toml"],
        ["train", "--preset", "olmo2-tiny", "--set", "data.corpus=/no/such/corpus"],
    ],
)
def test_cli_config_errors_exit_2_and_create_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no runs/


def test_cli_malformed_toml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[optim\nlr = ")
    assert main(["config", "--config", "bad.toml"]) == 2
    assert "--config: 'bad.toml' is not valid TOML" in capsys.readouterr().err


def test_presets_and_recipes():
    assert run_recipe_of(run_preset("olmo2-small")) == "olmo2"
    assert run_recipe_of(run_preset("olmo0424-small")) == "olmo0424"
    cfg = run_preset("olmo2-small")
    cfg.loss.z_loss = 0.0
    assert run_recipe_of(cfg) == "custom"
    o2, o0 = run_preset("olmo2-7B"), run_preset("olmo0424-7B")
    assert (o2.optim.eps, o0.optim.eps) == (1e-8, 1e-5)
    assert (o2.optim.embedding_weight_decay, o0.optim.embedding_weight_decay) == (False, True)
    assert o2.optim.norm_weight_decay and o0.optim.norm_weight_decay  # decay_norm_and_bias: true
    cfg = run_preset("olmo2-small")
    cfg.optim.norm_weight_decay = False
    assert run_recipe_of(cfg) == "custom"
    assert (o2.loss.z_loss, o0.loss.z_loss) == (1e-5, 0.0)
    assert (o2.model.d_model, o2.model.n_layers, o2.model.n_heads) == (4096, 32, 32)
    RunConfig().validate()
