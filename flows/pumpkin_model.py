"""The pumpkin classifier, its training loop and its metrics, shared by the flow and
``bench/baseline_train.py`` so both measure exactly the same work.

The network is deliberately small (three strided convolutions, then global average and
max pooling: a rot spot anywhere lights up the max) so the whole flow trains in well
under a minute on two CPU cores. It is exported as TorchScript: ``forward`` takes
``(N, 64, 64, 3)`` floats in ``[0, 1]`` and returns logits ``(N, 2)`` (0 = bad,
1 = good); ``features`` returns the cheap summary features the drift check compares
against the training reference. The serving side needs only torch to load it.
"""


import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

FEATURE_NAMES = [
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "brightness",
    "saturation",
    "orangeness",
    "dark_fraction",
]


def summary_features(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 10) per-photo colour statistics (see FEATURE_NAMES).

    Chosen to move when the crop changes (a pale variety shifts saturation, orangeness
    and brightness) while staying cheap enough to compute on every request.
    """
    flat = x.reshape(x.shape[0], -1, 3)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1)
    luma = 0.299 * flat[..., 0] + 0.587 * flat[..., 1] + 0.114 * flat[..., 2]
    cmax = flat.max(dim=2).values
    cmin = flat.min(dim=2).values
    saturation = ((cmax - cmin) / cmax.clamp(min=1e-3)).mean(dim=1)
    orangeness = (flat[..., 0] - flat[..., 2]).clamp(min=0.0).mean(dim=1)
    dark = (luma < 0.25).to(x.dtype).mean(dim=1)
    return torch.cat(
        [mean, std, luma.mean(dim=1, keepdim=True), saturation[:, None], orangeness[:, None],
         dark[:, None]],
        dim=1,
    )


class PumpkinNet(nn.Module):
    """Small CNN: 64x64 RGB photo -> logits for (bad, good)."""

    feature_names: list[str]

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.feature_names = list(FEATURE_NAMES)

        def block(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.body = nn.Sequential(
            block(3, width, 5), block(width, 2 * width, 3), block(2 * width, 2 * width, 3)
        )
        self.head = nn.Linear(4 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NHWC in, so permuting gives a channels-last NCHW view without a copy.
        h = self.body(x.permute(0, 3, 1, 2) - 0.5)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Summary features for drift detection, (N, len(feature_names))."""
        return summary_features(x)


@dataclass
class TrainResult:
    """The trained model (on the CPU, in eval mode) and how the training went."""

    model: PumpkinNet
    epoch_metrics: list[dict[str, float]]
    seconds: float
    samples_per_second: float


def pick_device(prefer: str | None = None) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is an error, not a fallback.

    Unset, ``TRELLIS_DEVICE`` decides: a cluster run that holds a GPU sets ``cuda``, so a
    driver torch cannot use fails the run instead of training on the CPU.
    """
    prefer = prefer or os.environ.get("TRELLIS_DEVICE") or "auto"
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(prefer)


def _as_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def train_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    device: torch.device | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Adam with a one-cycle schedule and horizontal flips; images uint8 or [0, 1] floats.

    ``on_epoch(epoch, metrics)`` is called after every epoch (1-based) with ``loss``,
    ``train_accuracy`` and ``val_accuracy`` so callers can report progress live.
    """
    if epochs < 1 or batch_size < 1 or len(x_train) == 0:
        raise ValueError("need epochs >= 1, batch_size >= 1 and a non-empty training set")
    device = device or pick_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = _as_float(x_train).to(device), torch.as_tensor(y_train, dtype=torch.long).to(device)
    model = PumpkinNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=gen).to(device)
        total_loss, correct = 0.0, 0
        for i in range(0, len(xt), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = xt[idx], yt[idx]
            flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(2), xb)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        val_pred = predict(model, x_val, device=device)
        metrics = {
            "epoch": float(epoch),
            "loss": total_loss / len(xt),
            "train_accuracy": correct / len(xt),
            "val_accuracy": float((val_pred == np.asarray(y_val)).mean()) if len(y_val) else 0.0,
        }
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(model.cpu(), history, seconds, epochs * len(xt) / seconds)


@torch.no_grad()
def predict(
    model: nn.Module, x: np.ndarray, device: torch.device | None = None, batch_size: int = 256
) -> np.ndarray:
    """Class indices for uint8 or float images, in eval mode (restores the mode after)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = _as_float(x[i : i + batch_size])
        out.append(model(xb.to(device) if device is not None else xb).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def features(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's exported summary features for uint8 or float images, as float64."""
    out = [model.features(_as_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, len(FEATURE_NAMES)))


def to_torchscript(model: PumpkinNet) -> bytes:
    """Script the model in eval mode and serialise it (loadable with plain torch.jit.load).

    TorchScript is what docs/contracts.md fixes for the serving image; recent torch releases mark
    the jit API deprecated with a FutureWarning, which is silenced here on purpose.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model.cpu().eval()), buf)
    return buf.getvalue()


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """Load serialised TorchScript onto the CPU (jit deprecation warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, object]:
    """Held-out metrics of docs/contracts.md (metrics.json).

    ``confusion_matrix[i][j]`` counts photos of true class i predicted as class j
    (0 = bad, 1 = good); ``f1`` is the macro average over both classes.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    out: dict[str, object] = {"accuracy": float(np.trace(cm) / max(1, cm.sum()))}
    f1s = []
    for k, name in enumerate(("bad", "good")):
        precision = cm[k, k] / max(1, cm[:, k].sum())
        recall = cm[k, k] / max(1, cm[k, :].sum())
        out[f"precision_{name}"] = float(precision)
        out[f"recall_{name}"] = float(recall)
        total = precision + recall
        f1s.append(0.0 if total == 0 else 2 * precision * recall / total)
    out["f1"] = float(np.mean(f1s))
    out["confusion_matrix"] = cm.tolist()
    return out
