"""Drift statistics against scipy.stats.ks_2samp and alibi-detect's KSDrift semantics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp, kstwo

from controller.drift import (
    PELZ_GOOD_MIN_N,
    DriftResult,
    FeatureDrift,
    Reference,
    correct,
    ks_pvalue,
    ks_test,
    psi_test,
)

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _data(n: int, m: int, f: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, f))
    win = rng.normal(size=(m, f)) + np.linspace(0.0, 0.6, f)  # feature 0 unshifted
    if kind == "discrete":  # heavy ties inside and across the samples
        ref, win = np.round(ref), np.round(win)
    elif kind == "shared":  # window rows copied from the reference: exact cross ties
        k = min(n, m) // 2
        win[:k] = ref[:k]
    return ref, win


def _names(f: int) -> list[str]:
    return [f"f{i}" for i in range(f)]


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("n", "m", "f", "kind"),
    [
        (2000, 500, 8, "normal"),
        (2000, 10000, 3, "normal"),
        (2000, 50, 8, "normal"),
        (300, 300, 4, "discrete"),
        (2000, 120, 4, "shared"),
        (40, 13, 3, "discrete"),
        (7, 2500, 2, "normal"),
    ],
)
def test_statistic_and_p_value_match_scipy_ks_2samp(n: int, m: int, f: int, kind: str) -> None:
    ref, win = _data(n, m, f, kind)
    result = ks_test(Reference.from_samples(_names(f), ref), win)
    by_name = {feat.name: feat for feat in result.features}
    for i in range(f):
        expected = ks_2samp(ref[:, i], win[:, i], method="asymp")
        got = by_name[f"f{i}"]
        assert got.statistic == pytest.approx(expected.statistic, abs=1e-15)
        assert abs(got.p_value - expected.pvalue) <= 1e-6
        if expected.pvalue < 0.05:  # where decisions are made: same numbers as scipy
            assert got.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.window == m and result.dropped == 0


@pytest.mark.parametrize(
    "n", [1, 3, 20, 140, 141, 200, PELZ_GOOD_MIN_N - 1, PELZ_GOOD_MIN_N, 400, 1667, 5000]
)
def test_ks_pvalue_follows_kstwo_on_a_dense_grid(n: int) -> None:
    # Every branch of scipy's dispatch: the centre (Durbin / Pelz-Good) and both tails.
    d = np.concatenate([np.linspace(0.0, 1.0, 201), np.linspace(0.0, 3.0 / np.sqrt(n), 401)])
    expected = kstwo.sf(d, n)
    got = ks_pvalue(d, n)
    assert np.abs(got - expected).max() <= 1e-6
    small = expected < 0.05
    np.testing.assert_allclose(got[small], expected[small], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    ("p_values", "level", "correction", "detected", "threshold"),
    [
        ([0.006, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], 0.05, "bonferroni", True, 0.05 / 8),
        ([0.00625, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], 0.05, "bonferroni", False, 0.05 / 8),
        ([0.03, 0.04], 0.05, "bonferroni", False, 0.025),  # each alone would pass 0.05
        ([0.3], 0.05, "bonferroni", False, 0.05),
        ([0.049], 0.05, "bonferroni", True, 0.05),
        ([0.02, 0.02, 0.02, 0.02], 0.05, "fdr", True, 0.05),  # BH finds what Bonferroni misses
        ([0.02, 0.02, 0.02, 0.02], 0.05, "bonferroni", False, 0.0125),
        ([0.01, 0.03, 0.2, 0.9], 0.05, "fdr", True, 0.0125),
        ([0.0125, 0.9], 0.025, "fdr", False, 0.0125),
    ],
)
def test_corrections_follow_alibi_detect(
    p_values: list[float], level: float, correction: Any, detected: bool, threshold: float
) -> None:
    got_detected, got_threshold = correct(p_values, level, correction)
    assert got_detected is detected
    assert got_threshold == pytest.approx(threshold)


def test_ks_test_flags_the_shifted_feature_with_bonferroni_bar() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(2000, 8))
    win = rng.normal(size=(500, 8))
    win[:, 5] += 0.5
    result = ks_test(Reference.from_samples(_names(8), ref), win, p_value=0.05)
    assert result.detected and result.test == "ks"
    assert result.threshold == pytest.approx(0.05 / 8)
    assert result.top.name == "f5" and result.top.p_value < 1e-6
    p = [feat.p_value for feat in result.features]
    assert p == sorted(p)
    same = ks_test(Reference.from_samples(_names(8), ref), rng.normal(size=(500, 8)))
    assert same.detected is (min(feat.p_value for feat in same.features) < 0.05 / 8)


def test_psi_is_small_without_drift_and_large_with_it() -> None:
    rng = np.random.default_rng(4)
    ref = Reference.from_samples(["a", "b"], rng.normal(size=(2000, 2)))
    assert ref.psi_expected.sum(axis=1) == pytest.approx([1.0, 1.0])
    itself = psi_test(ref, ref.samples)
    assert max(feat.psi for feat in itself.features) == pytest.approx(0.0, abs=1e-12)
    steady = psi_test(ref, rng.normal(size=(5000, 2)))
    assert not steady.detected and all(0 <= feat.psi < 0.02 for feat in steady.features)
    moved = rng.normal(size=(5000, 2))
    moved[:, 1] += 1.0
    shifted = psi_test(ref, moved, threshold=0.2)
    assert shifted.detected and shifted.top.name == "b" and shifted.top.psi > 0.5
    assert shifted.threshold == 0.2 and shifted.headline().startswith("drift b psi=")
    flat = psi_test(ref, np.full((100, 2), 7.0))  # everything in one bin: finite, large
    assert all(np.isfinite(feat.psi) and feat.psi > 2 for feat in flat.features)


def test_non_finite_rows_are_dropped_not_propagated() -> None:
    ref, win = _data(500, 200, 3, "normal")
    reference = Reference.from_samples(_names(3), ref)
    dirty = win.copy()
    dirty[[3, 50], 1] = [np.nan, np.inf]
    got, clean = ks_test(reference, dirty), ks_test(reference, np.delete(win, [3, 50], axis=0))
    assert got.dropped == 2 and got.window == 198
    assert got.features == clean.features
    with pytest.raises(ValueError, match="no rows"):
        ks_test(reference, np.full((4, 3), np.nan))


@pytest.mark.parametrize(
    ("names", "samples"),
    [
        ([], np.zeros((5, 0))),
        (["a", "a"], np.zeros((5, 2))),
        (["a"], np.zeros((1, 1))),
        (["a", "b"], np.zeros((5, 3))),
        (["a"], [[0.0], [np.nan]]),
    ],
)
def test_bad_references_are_rejected(names: list[str], samples: Any) -> None:
    with pytest.raises(ValueError):
        Reference.from_samples(names, samples)


def test_reference_from_contract_json_is_frozen_and_checked_against_windows() -> None:
    doc = {
        "feature_names": ["hue", "size"],
        "samples": [[0.1 * i, i] for i in range(50)],
        "summary": {},
        "class_counts": {"bad": 25, "good": 25},
    }
    ref = Reference.from_json(json.dumps(doc))
    assert ref.feature_names == ("hue", "size") and ref.n == 50
    with pytest.raises(ValueError):
        ref.sorted_columns[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"\(m, 2\)"):
        ks_test(ref, np.zeros((10, 3)))


def test_results_are_deterministic_and_row_order_invariant() -> None:
    ref, win = _data(1000, 300, 4, "discrete", seed=9)
    reference = Reference.from_samples(_names(4), ref)
    shuffled = np.random.default_rng(1).permutation(win)
    assert ks_test(reference, win) == ks_test(reference, win) == ks_test(reference, shuffled)
    assert psi_test(reference, win) == psi_test(reference, shuffled)


def test_to_status_is_json_safe_rounded_and_capped() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 70))
    win = rng.normal(size=(300, 70)) + 40.0  # p underflows to 0, PSI saturates
    status = ks_test(Reference.from_samples(_names(70), ref), win).to_status()
    text = json.dumps(status, allow_nan=False)
    assert len(status["features"]) == 64
    assert set(status["features"][0]) == {"name", "pValue", "statistic", "psi"}
    assert status["detected"] is True and status["window"] == 300
    odd = DriftResult(True, "ks", 0.01, (FeatureDrift("x", float("nan"), 1 / 3, float("inf")),), 9)
    feature = json.loads(json.dumps(odd.to_status(), allow_nan=False))["features"][0]
    assert feature == {"name": "x", "pValue": 1.0, "statistic": 0.3333, "psi": 1e300}
    assert len(text) < 10_000
