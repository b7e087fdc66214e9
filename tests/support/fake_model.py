"""A tiny stand-in for the trained pumpkin classifier, with the same artifact contract.

Tests need model versions before (and independently of) the real training flow: this
module writes a version directory (``model.pt``, ``reference.json``, ``metrics.json``,
``meta.json``) per ``docs/contracts.md``. The TorchScript model classifies by how much
of the image is pumpkin-orange, so tests can build inputs of a known class.

The "bad" variants exist for canary tests: ``fail_fraction`` makes ``forward`` raise on
a deterministic pseudo-random fraction of inputs (a model bug the server answers with
500), ``invert`` swaps the classes (a model that serves fine but is wrong). Latency is
injected by the model server itself (``TRELLIS_FAULT=latency_ms=...``), not here, so no
test burns CPU on a busy loop.
"""

import json
import time
import warnings
from pathlib import Path
from typing import Any, List  # noqa: UP035 (TorchScript wants typing.List)

import numpy as np
import torch

IMAGE_SHAPE = (64, 64, 3)
CLASS_NAMES = ("bad", "good")
FEATURE_NAMES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "brightness",
    "orange_ratio",
)


class FakePumpkinNet(torch.nn.Module):
    """Logits from the share of orange pixels; see the module docstring for the faults."""

    feature_names: List[str]  # noqa: UP006
    fail_fraction: float
    invert: bool

    def __init__(self, fail_fraction: float = 0.0, invert: bool = False) -> None:
        super().__init__()
        self.feature_names = list(FEATURE_NAMES)
        self.fail_fraction = float(fail_fraction)
        self.invert = bool(invert)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2))
        std = x.std(dim=(1, 2))
        brightness = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        orange = ((x[..., 0] > 0.6) & (x[..., 2] < 0.4)).float().mean(dim=(1, 2)).unsqueeze(1)
        return torch.cat([mean, std, brightness, orange], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.fail_fraction > 0.0:
            # Deterministic per input, roughly uniform over random images; never the
            # all-zero probe a server loads with.
            u = torch.frac(x.double().sum(dim=(1, 2, 3)) * 7919.0)
            if bool((u > 1.0 - self.fail_fraction).any()):
                raise RuntimeError("fake model failure (fail_fraction)")
        score = 12.0 * (f[:, 7] - 0.5)
        logits = torch.stack([-score, score], dim=1)
        if self.invert:
            logits = -logits
        return logits


def make_images(n: int, good: bool | None = None, seed: int = 0) -> np.ndarray:
    """``n`` float32 images in [0, 1]; orange (good) or green-grey (bad), mixed if None."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n) if good is None else np.full(n, int(good))
    orange = np.array([0.9, 0.5, 0.1], dtype=np.float32)
    bad = np.array([0.35, 0.45, 0.3], dtype=np.float32)
    base = np.where(labels[:, None] == 1, orange, bad)[:, None, None, :]
    noise = rng.normal(0.0, 0.05, size=(n, *IMAGE_SHAPE)).astype(np.float32)
    return np.clip(base + noise, 0.0, 1.0).astype(np.float32)


def labels_of(images: np.ndarray) -> np.ndarray:
    """The class the (non-inverted) fake model predicts, computed without torch."""
    orange = ((images[..., 0] > 0.6) & (images[..., 2] < 0.4)).mean(axis=(1, 2))
    return (orange > 0.5).astype(np.int64)


def payload(images: np.ndarray, kind: str = "ndarray") -> dict[str, Any]:
    """A Seldon prediction request body for ``images``."""
    if kind == "tensor":
        tensor = {"shape": list(images.shape), "values": images.ravel().tolist()}
        return {"data": {"tensor": tensor}}
    return {"data": {"ndarray": images.tolist()}}


def png(pixels: np.ndarray) -> bytes:
    """``pixels`` (uint8 (h, w, 3)) as PNG bytes, what a ``binData`` request carries."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_model_version(
    directory: Path,
    *,
    fail_fraction: float = 0.0,
    invert: bool = False,
    accuracy: float = 0.95,
    reference_rows: int = 200,
    seed: int = 0,
) -> Path:
    """Write a complete model version directory and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit.script is deprecated but is the contract
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(FakePumpkinNet(fail_fraction=fail_fraction, invert=invert))
    scripted.save(str(directory / "model.pt"))

    images = make_images(reference_rows, seed=seed)
    with torch.no_grad():
        feats = FakePumpkinNet().features(torch.from_numpy(images)).numpy()
    summary = {
        name: {
            "mean": float(col.mean()),
            "std": float(col.std()),
            "min": float(col.min()),
            "max": float(col.max()),
            "quantiles": [float(q) for q in np.quantile(col, [0.05, 0.25, 0.5, 0.75, 0.95])],
        }
        for name, col in zip(FEATURE_NAMES, feats.T, strict=True)
    }
    labels = labels_of(images)
    reference = {
        "feature_names": list(FEATURE_NAMES),
        "samples": feats.tolist(),
        "summary": summary,
        "class_counts": {"bad": int((labels == 0).sum()), "good": int((labels == 1).sum())},
    }
    metrics = {
        "accuracy": accuracy,
        "precision_bad": accuracy,
        "recall_bad": accuracy,
        "precision_good": accuracy,
        "recall_good": accuracy,
        "f1": accuracy,
        "confusion_matrix": [[95, 5], [5, 95]],
    }
    meta = {
        "flow": "FakePumpkinFlow",
        "run": f"fake/{seed}",
        "dataset_fingerprint": f"fake-{seed}",
        "commit": "0" * 40,
        "parameters": {"fail_fraction": fail_fraction, "invert": invert},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name, content in (
        ("reference.json", reference),
        ("metrics.json", metrics),
        ("meta.json", meta),
    ):
        (directory / name).write_text(json.dumps(content))
    return directory
