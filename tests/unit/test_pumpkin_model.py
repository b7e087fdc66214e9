"""The pumpkin classifier: export contract, metrics, and the variety-shift story."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from controller.paths import FLOWS_DIR

if str(FLOWS_DIR) not in sys.path:
    sys.path.insert(0, str(FLOWS_DIR))

import pumpkin_data
import pumpkin_model


def test_torchscript_export_matches_the_contract() -> None:
    model = pumpkin_model.PumpkinNet().eval()
    scripted = pumpkin_model.load_torchscript(pumpkin_model.to_torchscript(model))
    x = torch.from_numpy(pumpkin_data.generate(5, seed=0).x)
    logits = scripted(x)
    assert logits.shape == (5, 2)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert scripted.features(x).shape == (5, len(pumpkin_model.FEATURE_NAMES))
    assert list(scripted.feature_names) == pumpkin_model.FEATURE_NAMES


def test_summary_features_are_plain_colour_statistics() -> None:
    x = torch.zeros(2, 64, 64, 3)
    x[0, ..., 0] = 1.0  # pure red: saturated, "orange", not dark
    feats = dict(zip(pumpkin_model.FEATURE_NAMES, pumpkin_model.summary_features(x).T,
                     strict=True))
    assert feats["mean_r"].tolist() == [1.0, 0.0]
    assert feats["saturation"].tolist() == [1.0, 0.0]
    assert feats["orangeness"].tolist() == [1.0, 0.0]
    assert feats["dark_fraction"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], {"accuracy": 1.0, "f1": 1.0,
                                      "confusion_matrix": [[2, 0], [0, 2]]}),
        ([0, 0, 1, 1], [0, 1, 1, 1], {"accuracy": 0.75, "precision_good": 2 / 3,
                                      "recall_bad": 0.5, "recall_good": 1.0,
                                      "precision_bad": 1.0,
                                      "confusion_matrix": [[1, 1], [0, 2]]}),
        ([1, 1], [1, 1], {"precision_bad": 0.0, "recall_bad": 0.0, "f1": 0.5}),
    ],
)
def test_classification_metrics(y_true: list[int], y_pred: list[int], expected: dict) -> None:
    got = pumpkin_model.classification_metrics(np.array(y_true), np.array(y_pred))
    assert set(got) == {"accuracy", "precision_bad", "recall_bad", "precision_good",
                        "recall_good", "f1", "confusion_matrix"}
    for key, value in expected.items():
        assert got[key] == (value if key == "confusion_matrix" else pytest.approx(value)), key


def test_orange_model_degrades_on_white_pumpkins_and_mixed_training_fixes_it() -> None:
    """The retraining story: orange-only is clearly worse on white; mixed is good on both."""
    torch.set_num_threads(1)  # tiny model: one thread is fastest on a shared machine

    def fit(variety: str) -> pumpkin_model.PumpkinNet:
        b = pumpkin_data.generate(1400, seed=5, variety=variety)
        x = pumpkin_data.to_uint8(b.x)
        return pumpkin_model.train_model(x[:1200], b.y[:1200], x[1200:], b.y[1200:],
                                         epochs=6, lr=0.005, batch_size=64).model

    orange_test = pumpkin_data.generate(600, seed=91, variety="orange")
    white_test = pumpkin_data.generate(600, seed=92, variety="white")

    def accuracy(model: torch.nn.Module, batch: pumpkin_data.PumpkinBatch) -> float:
        return float((pumpkin_model.predict(model, batch.x) == batch.y).mean())

    orange_only, mixed = fit("orange"), fit("mixed")
    assert accuracy(orange_only, orange_test) >= 0.95
    assert 0.55 <= accuracy(orange_only, white_test) <= 0.85
    assert accuracy(mixed, orange_test) >= 0.93
    assert accuracy(mixed, white_test) >= 0.93
