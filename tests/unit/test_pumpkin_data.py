"""The synthetic pumpkin photos: deterministic, fast, labelled, and drifting on demand."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from scipy import stats

from controller.paths import FLOWS_DIR

if str(FLOWS_DIR) not in sys.path:
    sys.path.insert(0, str(FLOWS_DIR))

import pumpkin_data


def test_same_seed_same_photos_other_seed_other_photos() -> None:
    a = pumpkin_data.generate(64, seed=7, variety="mixed", watermelon_fraction=0.2)
    b = pumpkin_data.generate(64, seed=7, variety="mixed", watermelon_fraction=0.2)
    c = pumpkin_data.generate(64, seed=8, variety="mixed", watermelon_fraction=0.2)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_shapes_ranges_and_labels() -> None:
    batch = pumpkin_data.generate(300, seed=1, variety="mixed", watermelon_fraction=0.1)
    assert batch.x.shape == (300, 64, 64, 3) and batch.x.dtype == np.float32
    assert batch.x.min() >= 0.0 and batch.x.max() <= 1.0
    assert set(np.unique(batch.y)) == {-1, 0, 1}
    assert np.array_equal(batch.y == -1, batch.is_watermelon)
    # good pumpkins have no defect, bad ones have one; watermelons are neither
    assert (batch.defect[batch.y == 1] == 0).all()
    assert (batch.defect[batch.y == 0] > 0).all()
    assert not batch.is_white[batch.is_watermelon].any()
    small = pumpkin_data.generate(5, seed=1, size=32)
    assert small.x.shape == (5, 32, 32, 3)


@pytest.mark.parametrize(
    ("variety", "white_fraction", "expected_white"),
    [("orange", 0.5, 0.0), ("white", 0.5, 1.0), ("mixed", 0.3, 0.3), ("mixed", 0.8, 0.8)],
)
def test_variety_mix(variety: str, white_fraction: float, expected_white: float) -> None:
    batch = pumpkin_data.generate(2000, seed=3, variety=variety, white_fraction=white_fraction)
    assert batch.is_white.mean() == pytest.approx(expected_white, abs=0.04)
    assert (batch.y == 1).mean() == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3])
def test_watermelons_are_detected_by_colour_alone(fraction: float) -> None:
    batch = pumpkin_data.generate(1500, seed=11, variety="mixed", watermelon_fraction=fraction)
    assert batch.is_watermelon.mean() == pytest.approx(fraction, abs=0.03)
    found = pumpkin_data.detect_watermelons(batch.x)
    missed = (batch.is_watermelon & ~found).sum()
    false_alarms = (~batch.is_watermelon & found).sum()
    assert missed <= 0.01 * max(1, batch.is_watermelon.sum())
    assert false_alarms <= 2  # a pumpkin photo is (almost) never taken for a watermelon


def test_invalid_photos_are_flagged() -> None:
    x = pumpkin_data.generate(6, seed=2).x.copy()
    x[1, 3, 3, 0] = np.nan
    x[2, 0, 0, 1] = 1.5
    x[3] = 0.5  # blank
    x[4, 10, 10, 2] = -0.2
    assert pumpkin_data.find_invalid(x).tolist() == [False, True, True, True, True, False]
    with pytest.raises(ValueError, match="expected images"):
        pumpkin_data.find_invalid(x[..., :2])


def test_uint8_round_trip() -> None:
    x = pumpkin_data.generate(8, seed=4).x
    back = pumpkin_data.from_uint8(pumpkin_data.to_uint8(x))
    assert back.dtype == np.float32
    assert np.abs(back - x).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [{"variety": "green"}, {"white_fraction": 1.5}, {"watermelon_fraction": -0.1}, {"size": 8}],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        pumpkin_data.generate(4, **kwargs)


def test_white_pumpkins_shift_the_summary_features() -> None:
    """The drift check sees white pumpkins; another orange batch looks the same."""
    import pumpkin_model
    import torch

    def feats(batch: pumpkin_data.PumpkinBatch) -> dict[str, np.ndarray]:
        f = pumpkin_model.summary_features(torch.from_numpy(batch.x)).numpy()
        return dict(zip(pumpkin_model.FEATURE_NAMES, f.T, strict=True))

    orange = feats(pumpkin_data.generate(300, seed=1, variety="orange"))
    orange_again = feats(pumpkin_data.generate(300, seed=2, variety="orange"))
    white = feats(pumpkin_data.generate(300, seed=3, variety="white"))
    for name in ("saturation", "orangeness"):
        assert stats.ks_2samp(orange[name], white[name]).pvalue < 1e-12, name
        assert stats.ks_2samp(orange[name], orange_again[name]).pvalue > 1e-3, name
        assert white[name].mean() < orange[name].mean() - 0.1


def test_generating_4000_photos_is_fast() -> None:
    start = time.perf_counter()
    pumpkin_data.generate(4000, seed=0, variety="mixed", watermelon_fraction=0.05)
    assert time.perf_counter() - start < 4.0  # about 1 s on two busy cores
