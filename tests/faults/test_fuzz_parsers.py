"""Fuzzing the run-config and grid-spec parsers (hypothesis): whatever the input (random text as a
TOML file, random nested tables, random `--set` strings, random spec tables), the answer is a value
or a `ConfigError` with a one-line message, never another exception."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ablations.spec import TOP_KEYS, parse_spec
from model.config import ConfigError
from stability.config import RunConfig, apply_table, load_config, parse_override

# 200 fixed examples per test in the suite (a few seconds); STABILITY_FUZZ_EXAMPLES=N draws N fresh
# random ones per test instead (a longer hunt).
_HUNT = int(os.environ.get("STABILITY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_HUNT or 200, deadline=None, derandomize=not _HUNT, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SECTIONS = {f.name: [g.name for g in dataclasses.fields(getattr(RunConfig(), f.name))]
            for f in dataclasses.fields(RunConfig) if f.name != "preset"}
DOTTED = [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]
HUGE = 10**400  # a TOML integer tomllib reads fine, beyond float and int64

numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 2**63, -(2**63) - 1, HUGE, -HUGE, 0.0, -0.0, math.inf,
                     -math.inf, math.nan, 5e-324, 1e308, 1e-6, 1e6]),
    st.integers(), st.floats())
words = st.sampled_from(["null", "none", "auto", "cpu", "cuda", "xformers", "stdlib", "rms", "full",
                         "cosine", "uint16", "olmo2-tiny", "", "a\nb", "é", "\x00", "a.b"])
scalars = st.one_of(numbers, numbers, st.booleans(), st.none(), words, st.text(max_size=10))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(DOTTED + list(SECTIONS) + list(TOP_KEYS)),
                              st.text(max_size=8)), inner, max_size=4)), max_leaves=10)


@st.composite
def config_tables(draw) -> dict:
    """Nested tables, mostly real sections and keys so that the checks behind them run."""
    table: dict = {}
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 3)):
            section = draw(st.sampled_from(list(SECTIONS)))
            key = draw(st.one_of(st.sampled_from(SECTIONS[section]), st.text(max_size=8)))
            sub = table.setdefault(section, {})
            if isinstance(sub, dict):
                sub[key] = draw(values)
        else:
            table[draw(st.one_of(st.sampled_from([*SECTIONS, "preset"]), st.text(max_size=8)))] = \
                draw(values)
    return table


def toml_value(v) -> str:
    """A value as TOML text (None as the string "null", as `stability config` writes it)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '"null"'
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string (\\uXXXX escapes)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_text(table: dict) -> str:
    lines = [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for section, body in table.items():
        if isinstance(body, dict):
            lines.append(f"[{json.dumps(str(section))}]")
            lines += [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def config_error_or_value(fn, *args, **kwargs):
    """Call `fn`; a `ConfigError` must be one non-empty line; anything else propagates."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        assert str(exc).strip() and "\n" not in str(exc), repr(str(exc))
        return None


# ------------------------------------------------------------------------------------ run configs
@FUZZ
@given(text=st.text(alphabet=string.printable + "é\x00", max_size=200))
@example(text="[optim\nlr = 1\n")
@example(text="[optim]\nlr = 1e999999\n")
def test_random_text_as_a_config_file(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "run.toml"
    path.write_text(text, encoding="utf-8")
    config_error_or_value(load_config, None, path)


@FUZZ
@given(table=config_tables())
@example(table={"optim": {"lr": HUGE}})
@example(table={"optim": {"betas": [HUGE, 0.5]}})
@example(table={"train": {"steps": HUGE}})
def test_random_tables_as_a_config_file(table, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "run.toml"
    path.write_text(toml_text(table), encoding="utf-8")
    config_error_or_value(load_config, "olmo2-tiny", path)


@FUZZ
@given(table=config_tables())
@example(table={"model": {"clip_qkv": HUGE}})
@example(table={"model": {"d_model": -HUGE}})
def test_random_tables_through_apply_table(table):
    config_error_or_value(apply_table, RunConfig(), table)
    config_error_or_value(load_config, None, None, (), table)


@FUZZ
@given(key=st.one_of(st.sampled_from(DOTTED), st.text(max_size=16)),
       sep=st.sampled_from(["=", " = ", "==", ""]),
       raw=st.one_of(st.text(max_size=24), values.map(toml_value)))
@example(key="optim.lr", sep="=", raw=str(HUGE))
@example(key="model.n_heads", sep="=", raw=str(2**64))
def test_random_overrides(key, sep, raw):
    text = f"{key}{sep}{raw}"
    config_error_or_value(parse_override, text)
    config_error_or_value(load_config, "olmo2-tiny", None, [text])


# ------------------------------------------------------------------------------------ grid specs
@st.composite
def spec_tables(draw) -> dict:
    """Spec tables that are mostly well-formed, with one or more fields drawn at random."""
    arms = draw(st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(["a", "b", "c.d", "x y"]), st.text(max_size=5)),
                        st.one_of(config_tables(), values), min_size=1, max_size=3),
        values))
    fields = {
        "name": st.one_of(st.just("g"), values),
        "preset": st.one_of(st.just("olmo2-tiny"), values),
        "baseline": st.one_of(st.sampled_from(sorted(arms) if isinstance(arms, dict) and arms
                                              else ["a"]), values),
        "seeds": st.one_of(st.lists(st.one_of(st.integers(-2, 3), numbers), max_size=3), values),
        "lrs": st.one_of(st.lists(st.one_of(numbers, scalars), max_size=3), values),
        "budget": st.one_of(st.dictionaries(st.sampled_from(["steps", "tokens", "x"]), scalars,
                                            max_size=2), values),
        "base": st.one_of(config_tables(), values),
        "resources": st.one_of(st.dictionaries(
            st.sampled_from(["cpus", "gpus", "mem_gb", "time_min", "x"]), scalars, max_size=3), values),
        "description": st.one_of(st.text(max_size=10), values),
    }
    data: dict = {"arms": arms}
    for key, strategy in fields.items():
        required = key in ("name", "baseline", "seeds")
        if draw(st.integers(0, 9)) if required else draw(st.booleans()):
            data[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=6))] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        del data["arms"]
    return data


_SPEC = {"name": "g", "baseline": "a", "seeds": [0], "arms": {"a": {}}}


@FUZZ
@given(data=spec_tables())
@example(data={**_SPEC, "lrs": [HUGE]})
@example(data={**_SPEC, "budget": {"tokens": HUGE}})
@example(data={**_SPEC, "budget": {"tokens": 100}, "base": {"train": {"batch_size": 0}}})
@example(data={**_SPEC, "arms": {"a": {"optim": {"lr": HUGE}}}})
@example(data={**_SPEC, "seeds": [HUGE]})
def test_random_grid_specs(data):
    spec = config_error_or_value(parse_spec, data)
    if spec is not None:
        config_error_or_value(spec.validate)


@pytest.mark.parametrize(("data", "message"), [
    ({**_SPEC, "lrs": [HUGE]}, "lrs[0]: 100000000000... (401 digits) is too large for a number"),
    ({**_SPEC, "budget": {"tokens": HUGE}}, "budget.tokens: 100000000000... (401 digits) is out of range"),
    ({**_SPEC, "budget": {"tokens": 100}, "base": {"train": {"batch_size": 0}}},
     "base.train.batch_size: must be > 0"),
    ({**_SPEC, "arms": {"a": {"optim": {"lr": HUGE}}}}, "arms.a.optim.lr: 100000000000... (401 digits)"),
])
def test_what_fuzzing_found_is_a_one_line_error(data, message):
    """These raised OverflowError / ZeroDivisionError (tracebacks) before."""
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        parse_spec(data).validate()
