"""Options: the probe knobs by their config names; a wrong one fails at construction, in one line."""

from __future__ import annotations

import pytest

from model.config import ConfigError
from stability.hooks import ALLOWED, StabilityMonitor, parse_options


def test_probe_knobs_and_run_identity_are_accepted() -> None:
    o = parse_options({"every": 5, "attn_every": 25, "spike_window": 200, "arm": "qk", "seed": 3,
                       "tracking_uri": "sqlite:///x.db", "experiment": "e", "run_name": "r"})
    assert (o.probes.every, o.probes.attn_every, o.probes.spike_window) == (5, 25, 200)
    assert (o.arm, o.seed, o.tracking_uri, o.experiment, o.run_name) == ("qk", 3, "sqlite:///x.db", "e", "r")


def test_unknown_option_names_itself_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        StabilityMonitor(None, evrey=5)  # type: ignore[arg-type]  # fails before the model is read
    message = str(err.value)
    assert "\n" not in message and message.startswith("evrey: unknown option")
    assert "did you mean 'every'" in message and all(name in message for name in ALLOWED)


@pytest.mark.parametrize("options, key", [({"every": "ten"}, "every"), ({"every": 0}, "probes.every"),
                                          ({"log_every": 0}, "log_every")])
def test_bad_values_fail_in_one_line(options, key) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        parse_options(options)


def test_framework_callbacks_check_options_at_construction() -> None:
    from stability.hooks.hf import StabilityCallback as HF
    from stability.hooks.lightning import StabilityCallback as PL
    for cls in (HF, PL):
        with pytest.raises(ConfigError, match="^spike_windw: unknown option"):
            cls(spike_windw=10)
