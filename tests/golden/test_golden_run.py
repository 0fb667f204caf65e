"""Every metric of the fixed 30-step run equals the pinned one: keys, steps, values to the bit
(see golden_run.py for what is pinned and how to regenerate it)."""

from __future__ import annotations

import math
import warnings

import pytest

from tests.golden.golden_run import GOLDEN, load, platform, run_metrics

CROSS_PLATFORM_STEPS = 5


def test_every_logged_metric_is_pinned(tmp_path):
    pinned_platform, pinned = load(GOLDEN)
    got = run_metrics(tmp_path)
    assert sorted(got) == sorted(pinned), set(got) ^ set(pinned)
    bitwise = platform() == pinned_platform
    if not bitwise:  # another CPU rounds products differently, and 30 steps amplify it (grad norm
        # 15% apart at step 27 between two AVX512 machines): values of the first steps only
        warnings.warn(f"golden run pinned on {pinned_platform}, this is {platform()}: values of "
                      f"steps < {CROSS_PLATFORM_STEPS} compared to 1e-4, not to the bit", stacklevel=1)
    for key, points in pinned.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        for (step, want), (_, value) in zip(points, got[key]):
            if bitwise:
                assert value == want or (math.isnan(value) and math.isnan(want)), (key, step, value, want)
            elif step < CROSS_PLATFORM_STEPS:
                assert value == pytest.approx(want, rel=1e-4, abs=1e-5, nan_ok=True), (key, step)
