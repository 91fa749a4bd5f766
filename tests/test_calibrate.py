"""Score calibration (temperature / isotonic, chosen on held-out logloss) and length bucketing."""
from __future__ import annotations

import numpy as np
import pytest

from rgalign_core import calibration as calibrate
from rgalign_core import metrics
from rgalign_core.ds_trainer import bucketed_permutation


def miscalibrated(n=40_000, seed=0):
    """Scores twice as confident as they should be, and shifted: true p = σ(0.5·s - 1)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 2, n)
    y = (rng.random(n) < calibrate.sigmoid(0.5 * s - 1)).astype(np.float64)
    return s, y, np.arange(n) // 4  # 4 impressions per session


def test_temperature_scaling_recovers_the_true_map_and_lowers_ece():
    s, y, _ = miscalibrated()
    cal = calibrate.fit_temperature(s, y)
    assert cal["a"] == pytest.approx(0.5, abs=0.03) and cal["b"] == pytest.approx(-1.0, abs=0.05)
    before, after = calibrate.sigmoid(s), calibrate.apply(cal, s)
    assert metrics.ece(y, after) < 0.01 < metrics.ece(y, before)
    assert metrics.calibration_ratio(y, after) == pytest.approx(1.0, abs=0.02)


def test_isotonic_is_monotone_and_calibrated_in_sample():
    s, y, _ = miscalibrated()
    cal = calibrate.fit_isotonic(s, y)
    grid = np.linspace(-8, 8, 200)
    assert np.all(np.diff(calibrate.apply(cal, grid)) >= 0)
    assert metrics.calibration_ratio(y, calibrate.apply(cal, s)) == pytest.approx(1.0, abs=0.01)


def test_choose_compares_held_out_logloss_and_respects_a_fixed_method():
    s, y, sessions = miscalibrated()
    cal, held_out = calibrate.choose(s, y, sessions, "auto")
    assert set(held_out) == {"temperature", "isotonic"}
    assert cal["method"] == min(held_out, key=held_out.get)
    # the true map is a sigmoid of a line: temperature scaling is the right model here
    assert held_out["temperature"] <= held_out["isotonic"] + 1e-4
    cal, held_out = calibrate.choose(s, y, sessions, "isotonic")
    assert cal["method"] == "isotonic" and set(held_out) == {"isotonic"}


def test_bucketed_batches_are_a_permutation_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, 1000)
    perm = bucketed_permutation(lengths, 32, np.random.default_rng(1))
    assert sorted(perm) == list(range(1000))
    spread = lambda p: np.mean([np.ptp(lengths[p[i:i + 32]]) for i in range(0, 992, 32)])  # noqa: E731
    assert spread(perm) < 0.1 * spread(rng.permutation(1000))
    # padding a batch to its longest row wastes far less with buckets
    pad = lambda p: sum(32 * lengths[p[i:i + 32]].max() - lengths[p[i:i + 32]].sum() for i in range(0, 992, 32))  # noqa: E731
    assert pad(perm) < 0.1 * pad(rng.permutation(1000))


def test_an_unknown_method_stops_the_job_before_anything_trains(tmp_path, overrides):
    from jobs import calibrate
    from rgalign_core.stage import StageError

    with pytest.raises(StageError, match=r"calibrate.method='isotnic': use one of auto, temperature, isotonic"):
        calibrate.main(["--ds", "2026-12-01", *overrides(), "--set", "calibrate.method=isotnic"])
    assert not (tmp_path / "lake" / "models").exists()
