"""Seldon Core 1.17 model server for the pumpkin classifier.

Run as ``seldon-core-microservice PumpkinModel --service-type MODEL --http-port P`` with
this directory as cwd or on PYTHONPATH (1.17.1 imports the module named on the command
line and takes the class of the same name from it). Environment:

- ``MODEL_URI``: the model version directory (``file:///...`` or a plain path). Only local
  paths are read here; in a cluster Seldon's storage initializer downloads ``s3://`` URIs
  to a local directory (``/mnt/models``) and that path is what this server is given.
- ``TRELLIS_MODEL_VERSION``: the version number reported in tags and health (defaults to
  the directory name when it is an integer).
- ``TRELLIS_MAX_BODY_BYTES``: request body bound (default 5 MiB); larger bodies get 413.
- ``TRELLIS_INSTANCE_ID``: an opaque id echoed by ``/health/status``, so the process
  manager can tell this server from another that later took its port.
- ``TRELLIS_TORCH_THREADS``: torch intra-op threads (default 1: several servers share
  the machine).
- ``TRELLIS_FAULT``: fault injection for tests and demos, comma-separated ``key=value``:
  ``error_rate=0.3`` answers that fraction of valid requests with HTTP 500,
  ``latency_ms=400`` sleeps that long before predicting, ``seed=7`` makes the error draws
  reproducible. Unknown keys stop the server at start-up rather than being ignored.

Why ``predict_raw`` and not ``predict``: 1.17.1 converts the payload with ``np.array``
before ``predict`` is called, so a ragged ``ndarray`` or a tensor whose ``values`` do not
match its ``shape`` becomes an unhandled ValueError, i.e. HTTP 500. The raw hook sees the
JSON as sent, so every malformed request is answered 400 with a message naming the
problem. Custom metrics go through Seldon's raw-method channel (``meta.metrics``, which
1.17.1 moves into its Prometheus registry on the metrics port) and the per-row drift
features go out in ``meta.tags``. The ``metrics()``/``tags()`` hooks are deliberately not
defined: 1.17.1 also calls them while answering ``/health/status``, and they would have to
read per-request state off the shared model object.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from flask import Blueprint, request
from seldon_core.flask_utils import SeldonMicroserviceException
from werkzeug.exceptions import BadRequest, HTTPException

logger = logging.getLogger(__name__)

CLASS_NAMES = ["bad", "good"]
IMAGE_SHAPE = (64, 64, 3)
MAX_BATCH = 256
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
PREDICTION_PATHS = frozenset({"/predict", "/api/v1.0/predictions", "/api/v0.1/predictions"})
_DRAIN_LIMIT = 64 * 1024 * 1024  # read an oversize body this far so the 413 reaches the client
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def bad_input(message: str, status_code: int = 400) -> SeldonMicroserviceException:
    """A client error in Seldon's error format (``status.info`` carries the message)."""
    return SeldonMicroserviceException(message, status_code=status_code, reason="TRELLIS_BAD_INPUT")


@dataclass(frozen=True)
class Fault:
    """Injected misbehaviour, parsed from ``TRELLIS_FAULT``."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    seed: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Fault:
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in ("error_rate", "latency_ms", "seed"):
                expected = "error_rate=F, latency_ms=F, seed=N"
                raise ValueError(f"TRELLIS_FAULT: cannot use {item!r}; expected {expected}")
            values[key] = int(raw) if key == "seed" else float(raw)
        fault = cls(**values)
        if not 0.0 <= fault.error_rate <= 1.0 or fault.latency_ms < 0:
            raise ValueError(f"TRELLIS_FAULT out of range: {text!r}")
        return fault


def local_model_dir(uri: str) -> Path:
    """The directory a model URI names; only local paths are readable by this server."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
    else:
        raise ValueError(
            f"MODEL_URI {uri!r}: scheme {parsed.scheme!r} is not read by this server; only "
            "local paths (file:///dir or /dir) work. In a cluster, let Seldon's storage "
            "initializer download the URI and pass the local directory (/mnt/models)."
        )
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(f"MODEL_URI {uri!r}: no model.pt in {path}")
    return path


def images_from_request(message: object) -> tuple[np.ndarray, str]:
    """Validate a Seldon JSON request and return the images as float32 plus the data kind.

    Every rule of the input contract has its own message, because the client reading the
    400 is usually a person with curl.
    """
    if not isinstance(message, dict):
        raise bad_input(f"request body must be a JSON object, got {type(message).__name__}")
    data = message.get("data")
    if not isinstance(data, dict):
        raise bad_input('request needs a "data" object with "ndarray" or "tensor"')
    if "ndarray" in data:
        kind, raw = "ndarray", data["ndarray"]
        if not isinstance(raw, list):
            raise bad_input("data.ndarray must be a list of images")
        if not raw:
            raise bad_input("empty batch: data.ndarray has no images (need 1 to 256)")
        if len(raw) > MAX_BATCH:
            raise bad_input(f"batch of {len(raw)} images is too large; at most {MAX_BATCH}")
    elif "tensor" in data:
        kind, tensor = "tensor", data["tensor"]
        if not isinstance(tensor, dict):
            raise bad_input('data.tensor must be an object with "shape" and "values"')
        shape, raw = tensor.get("shape"), tensor.get("values")
        if not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
            raise bad_input("data.tensor.shape must be a list of integers")
        if not isinstance(raw, list):
            raise bad_input("data.tensor.values must be a flat list of numbers")
        if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
            raise bad_input(f"expected shape (N, 64, 64, 3), got {tuple(shape)}")
        if not 1 <= shape[0] <= MAX_BATCH:
            raise bad_input(f"batch size {shape[0]} out of range: need 1 to {MAX_BATCH}")
        if len(raw) != math.prod(shape):
            raise bad_input(
                f"data.tensor.values has {len(raw)} values but shape {tuple(shape)} "
                f"needs {math.prod(shape)}"
            )
    else:
        raise bad_input('data must hold "ndarray" or "tensor" (binData/strData are not accepted)')

    try:
        array = np.asarray(raw)
    except ValueError:
        raise bad_input(f"data.{kind} is ragged: the images do not all have one shape") from None
    if array.dtype.kind not in "iuf":
        what = "booleans" if array.dtype.kind == "b" else "non-numeric or null values"
        raise bad_input(f"data.{kind} holds {what} (numpy dtype {array.dtype}); send numbers")
    if kind == "tensor":
        array = array.reshape(shape)
    if array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
        hint = "; wrap a single image in a list" if array.shape == IMAGE_SHAPE else ""
        raise bad_input(f"expected shape (N, 64, 64, 3), got {array.shape}{hint}")
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise bad_input(f"{int(array.size - finite.sum())} non-finite values (NaN/Infinity)")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise bad_input(f"pixel values must lie in [0, 1]; got min={low:g}, max={high:g}")
    return array, kind


def _error_blueprint(max_body_bytes: int) -> Blueprint:
    """Request guards Seldon 1.17.1 lacks, registered through its ``model_error_handler``.

    Seldon's catch-all handler answers every exception with 500, including Werkzeug's
    404/405/413; it parses bodies of any size; and a JSON syntax error loses its detail.
    """
    bp = Blueprint("trellis_guards", __name__)

    @bp.record_once
    def _limit(state: Any) -> None:
        state.app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @bp.before_app_request
    def _guard() -> None:
        if request.method != "POST":
            return
        length = request.content_length
        if length is not None and length > max_body_bytes:
            _drain(request.environ.get("wsgi.input"), length)
            raise bad_input(
                f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes; "
                "send fewer images per request",
                status_code=413,
            )
        if request.path not in PREDICTION_PATHS:
            return
        if request.is_json:
            try:
                request.get_json()  # cached by Flask for Seldon's own parse
            except BadRequest:
                try:
                    json.loads(request.get_data(cache=True))
                except ValueError as exc:
                    raise bad_input(f"malformed JSON body: {exc}") from None
                raise bad_input("malformed JSON body") from None
        elif request.mimetype == _FORM_TYPES[0] and "json" not in request.form:
            raise bad_input(
                "form-encoded request without a json= field; send the JSON body with "
                "Content-Type: application/json",
                status_code=415,
            )
        elif request.mimetype not in _FORM_TYPES and "json" not in request.args:
            raise bad_input(
                f"unsupported Content-Type {request.mimetype or 'none'!r}; "
                "send application/json",
                status_code=415,
            )

    @bp.app_errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        info = exc.description or exc.name
        body = {"status": {"status": 1, "info": info, "code": -1, "reason": exc.name.upper()}}
        return body, code

    return bp


def _drain(stream: Any, length: int) -> None:
    """Read the unread body so closing the socket does not reset it before the reply."""
    remaining = min(length, _DRAIN_LIMIT)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(1 << 20, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


class PumpkinModel:
    """The Seldon user model: validation, inference, per-request metrics and tags."""

    def __init__(self, **_parameters: Any) -> None:
        self.model_uri = os.environ.get("MODEL_URI", "")
        self.fault = Fault.parse(os.environ.get("TRELLIS_FAULT"))
        self.max_body_bytes = int(os.environ.get("TRELLIS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
        self.model_error_handler = _error_blueprint(self.max_body_bytes)
        self.version = _version_from_env(self.model_uri)
        self.feature_names: list[str] = []
        self._model: Any = None
        self._torch: Any = None
        self._rng = random.Random(self.fault.seed)

    def load(self) -> None:
        """Load and smoke-test the TorchScript model; a failure stops the worker."""
        import torch

        torch.set_num_threads(int(os.environ.get("TRELLIS_TORCH_THREADS", "1")))
        directory = local_model_dir(self.model_uri)
        model = torch.jit.load(str(directory / "model.pt"), map_location="cpu").eval()
        names = [str(n) for n in model.feature_names]
        with torch.inference_mode():
            probe = torch.zeros((1, *IMAGE_SHAPE))
            logits, feats = model(probe), model.features(probe)
        if tuple(logits.shape) != (1, 2) or tuple(feats.shape) != (1, len(names)):
            raise ValueError(
                f"{directory / 'model.pt'}: forward gave {tuple(logits.shape)} (want (1, 2)), "
                f"features gave {tuple(feats.shape)} (want (1, {len(names)}))"
            )
        self._torch, self._model, self.feature_names = torch, model, names
        logger.info("loaded model v%s from %s (%d features)", self.version, directory, len(names))

    def health_status(self) -> dict[str, Any]:
        """Ready only once ``load()`` has succeeded (503 before)."""
        if self._model is None:
            raise SeldonMicroserviceException(
                "model not loaded yet", status_code=503, reason="TRELLIS_NOT_READY"
            )
        return {
            "status": "ok",
            "version": self.version,
            "model_uri": self.model_uri,
            "instance": os.environ.get("TRELLIS_INSTANCE_ID", ""),
        }

    def init_metadata(self) -> dict[str, Any]:
        return {
            "name": "pumpkin-classifier",
            "versions": [str(self.version)],
            "platform": "torchscript",
            "inputs": [{"messagetype": "tensor", "schema": {"shape": list(IMAGE_SHAPE)}}],
            "outputs": [{"messagetype": "tensor", "schema": {"names": CLASS_NAMES, "shape": [2]}}],
        }

    def predict_raw(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._model is None:
            raise SeldonMicroserviceException(
                "model not loaded yet", status_code=503, reason="TRELLIS_NOT_READY"
            )
        images, kind = images_from_request(message)
        self._inject_fault()
        torch = self._torch
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                batch = torch.from_numpy(images)
                probs = torch.softmax(self._model(batch), dim=1).numpy().astype(np.float64)
                feats = self._model.features(batch).numpy()
        except Exception as exc:  # a model bug is the server's fault: 500, with the reason
            first_line = f"model failed: {exc}".splitlines()[0]
            raise SeldonMicroserviceException(
                first_line, status_code=500, reason="TRELLIS_MODEL_ERROR"
            ) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        preds = probs.argmax(axis=1)
        if kind == "tensor":
            data: dict[str, Any] = {
                "names": CLASS_NAMES,
                "tensor": {"shape": list(probs.shape), "values": probs.ravel().tolist()},
            }
        else:
            data = {"names": CLASS_NAMES, "ndarray": probs.tolist()}
        meta: dict[str, Any] = {
            "tags": self._request_tags(feats, preds),
            "metrics": self._request_metrics(images, preds, elapsed_ms),
        }
        puid = (message.get("meta") or {}).get("puid")
        if isinstance(puid, str):
            meta["puid"] = puid
        return {"data": data, "meta": meta}

    def _request_tags(self, feats: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
        """Per-row drift features for the router's request log (no torch needed there)."""
        return {
            "trellis.version": self.version,
            "trellis.feature_names": self.feature_names,
            "trellis.features": np.round(feats.astype(np.float64), 6).tolist(),
            "trellis.predictions": preds.tolist(),
        }

    def _request_metrics(
        self, images: np.ndarray, preds: np.ndarray, elapsed_ms: float
    ) -> list[dict[str, Any]]:
        """Seldon custom metrics: predicted-class counters and input summary gauges."""
        counts = np.bincount(preds, minlength=len(CLASS_NAMES))
        metrics: list[dict[str, Any]] = [
            {
                "type": "COUNTER",
                "key": "trellis_predictions_total",
                "value": int(count),
                "tags": {"class": name},
            }
            for name, count in zip(CLASS_NAMES, counts, strict=True)
            if count
        ]
        metrics += [
            {"type": "GAUGE", "key": "trellis_model_input_mean", "value": float(images.mean())},
            {"type": "GAUGE", "key": "trellis_model_input_std", "value": float(images.std())},
            {"type": "GAUGE", "key": "trellis_model_batch_size", "value": len(images)},
            # Seldon TIMERs take milliseconds and export a histogram in seconds.
            {"type": "TIMER", "key": "trellis_model_inference_seconds", "value": elapsed_ms},
        ]
        return metrics

    def _inject_fault(self) -> None:
        if self.fault.latency_ms:
            time.sleep(self.fault.latency_ms / 1000.0)
        if self.fault.error_rate and self._rng.random() < self.fault.error_rate:
            raise SeldonMicroserviceException(
                "injected fault (TRELLIS_FAULT error_rate)",
                status_code=500,
                reason="TRELLIS_INJECTED_FAULT",
            )


def _version_from_env(model_uri: str) -> int | None:
    raw = os.environ.get("TRELLIS_MODEL_VERSION")
    if raw:
        return int(raw)
    name = Path(urlparse(model_uri).path or model_uri).name
    return int(name) if name.isdigit() else None
