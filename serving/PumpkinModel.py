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

Requests: ``data.ndarray``, ``data.tensor`` or ``binData`` (one 64×64 PNG/JPEG photo);
the rules and their 400s are in ``pumpkin_inputs``. A ``tensor`` request is answered as a
tensor, the other two as ``data.ndarray`` class probabilities.

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
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from flask import Blueprint, has_request_context, request
from pumpkin_inputs import IMAGE_SHAPE, bad_input, images_from_request
from seldon_core.flask_utils import SeldonMicroserviceException
from werkzeug.exceptions import BadRequest, HTTPException

logger = logging.getLogger(__name__)

CLASS_NAMES = ["bad", "good"]
# Seldon's puid header (the executor's payload.SeldonPUIDHeader; the model server's
# environment has no controller package to share controller.serving.router_http's).
PUID_HEADER = "Seldon-Puid"
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
PREDICTION_PATHS = frozenset({"/predict", "/api/v1.0/predictions", "/api/v0.1/predictions"})
FEEDBACK_PATHS = frozenset({"/send-feedback", "/api/v1.0/feedback", "/api/v0.1/feedback"})
_DRAIN_LIMIT = 64 * 1024 * 1024  # read an oversize body this far so the 413 reaches the client
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


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


def _check_json(text: str | bytes, where: str) -> Any:
    """``text`` decoded, or a 400 (Seldon's own decode would be a 500)."""
    try:
        return json.loads(text)
    except RecursionError:  # [[[[...]]]] deeper than the decoder's recursion limit
        raise bad_input(f"malformed JSON {where}: nested too deeply") from None
    except ValueError as exc:
        raise bad_input(f"malformed JSON {where}: {exc}") from None


def _check_message(message: Any, feedback: bool) -> None:
    """Seldon turns a feedback message into a protobuf, which needs an object (a bare
    number is a TypeError, i.e. a 500); predictions are checked by ``predict_raw``."""
    if feedback and message is not None and not isinstance(message, dict):
        raise bad_input(f"feedback must be a JSON object, got {type(message).__name__}")


def _check_inputs(feedback: bool) -> None:
    """Decode what Seldon's ``get_request`` will decode, in its order, so that whatever
    it would fail on (with a 500) is a 400 here: multipart fields, a ``json=`` form field
    or query argument, else the body."""
    if request.content_type is not None and "multipart/form-data" in request.content_type:
        for key in request.form:
            if key != "strData":
                _check_json(request.form[key], f"in form field {key!r}")
        for key, upload in request.files.items():
            if key != "binData":
                try:
                    upload.read().decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise bad_input(f"form file {key!r} is not UTF-8 text: {exc}") from None
                finally:
                    upload.seek(0)  # Seldon reads it again
        return
    text = request.form.get("json") or request.args.get("json")
    if text:
        _check_message(_check_json(text, 'in the "json" field'), feedback)
        return
    if request.method != "POST":
        return  # Seldon answers a GET without json= with its own 400
    if request.is_json:
        try:
            _check_message(request.get_json(), feedback)  # cached for Seldon's own parse
        except BadRequest:
            _check_json(request.get_data(cache=True), "body")
            raise bad_input("malformed JSON body") from None
        except RecursionError:
            raise bad_input("malformed JSON body: nested too deeply") from None
    elif request.mimetype == _FORM_TYPES[0]:
        raise bad_input(
            "form-encoded request without a json= field; send the JSON body with "
            "Content-Type: application/json",
            status_code=415,
        )
    elif request.mimetype not in _FORM_TYPES:
        raise bad_input(
            f"unsupported Content-Type {request.mimetype or 'none'!r}; send application/json",
            status_code=415,
        )


def _error_blueprint(max_body_bytes: int) -> Blueprint:
    """Request guards Seldon 1.17.1 lacks, registered through its ``model_error_handler``.

    Seldon's catch-all handler answers every exception with 500, including Werkzeug's
    404/405/413; it parses bodies of any size; a JSON syntax error loses its detail, and
    one in a ``json=`` field or query argument, or JSON nested past the decoder's
    recursion limit, is a 500. Every prediction and feedback request is decoded here
    first, so malformed input is a 4xx before Seldon or the model sees it.
    """
    bp = Blueprint("trellis_guards", __name__)

    @bp.record_once
    def _limit(state: Any) -> None:
        state.app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @bp.before_app_request
    def _guard() -> None:
        length = request.content_length
        if request.method == "POST" and length is not None and length > max_body_bytes:
            _drain(request.environ.get("wsgi.input"), length)
            raise bad_input(
                f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes; "
                "send fewer images per request",
                status_code=413,
            )
        if request.path not in PREDICTION_PATHS | FEEDBACK_PATHS:
            return
        try:
            _check_inputs(feedback=request.path in FEEDBACK_PATHS)
        except (BadRequest, ValueError, OSError) as exc:  # a body the form parser cannot
            # read; gunicorn's IOErrors: a chunked body cut off or mis-sized
            raise bad_input(f"unreadable request body: {exc!r}") from None

    @bp.app_errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        info = exc.description or exc.name
        body = {"status": {"status": 1, "info": info, "code": -1, "reason": exc.name.upper()}}
        return body, code

    return bp


def _patch_gunicorn_chunked_reader() -> None:
    """Make gunicorn's chunked-body parser stop at the end of the stream.

    gunicorn 20.1.0 (the newest seldon-core 1.17.1 allows: ``gunicorn<20.2``) waits for a
    chunk's closing CRLF with ``while len(rest) < 2: rest += unreader.read()``; a body cut
    off right after a chunk's data makes ``read()`` return ``b""`` forever, so one
    malformed request pins a worker at full CPU for good. This is gunicorn 21's loop
    (which breaks on end of stream, so the missing terminator is an error: a 400 here).
    """
    try:
        from gunicorn.http import body
        from gunicorn.http.errors import ChunkMissingTerminator, NoMoreData
    except ImportError:  # not served by gunicorn (tests import this module directly)
        return

    def parse_chunked(self: Any, unreader: Any) -> Any:
        (size, rest) = self.parse_chunk_size(unreader)
        while size > 0:
            while size > len(rest):
                size -= len(rest)
                yield rest
                rest = unreader.read()
                if not rest:
                    raise NoMoreData()
            yield rest[:size]
            rest = rest[size:]  # then the chunk's CRLF
            while len(rest) < 2:
                more = unreader.read()
                if not more:
                    break
                rest += more
            if rest[:2] != b"\r\n":
                raise ChunkMissingTerminator(rest[:2])
            (size, rest) = self.parse_chunk_size(unreader, data=rest[2:])

    body.ChunkedReader.parse_chunked = parse_chunked


_patch_gunicorn_chunked_reader()


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
        puid = _puid(message)
        if puid:
            meta["puid"] = puid
        return {"data": data, "meta": meta}

    def send_feedback_raw(self, feedback: Any) -> Any:
        """Acknowledge feedback (cluster mode: Seldon's executor logs it and forwards it
        here). Seldon's default would turn the request and truth into arrays and answer a
        ragged one with 500; the model learns nothing from feedback, so only what cannot
        be read is refused (400)."""
        from seldon_core.proto import prediction_pb2
        from seldon_core.utils import grpc_datadef_to_array

        for part in ("request", "response", "truth"):
            message = getattr(feedback, part)
            if message.HasField("data"):
                try:
                    grpc_datadef_to_array(message.data)
                except (ValueError, TypeError) as exc:
                    raise bad_input(f"feedback {part}.data is not an array: {exc}") from None
        return prediction_pb2.SeldonMessage()

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


def _puid(message: dict[str, Any]) -> str | None:
    """The call's puid, for the answer's ``meta.puid``: in a cluster, the ``Seldon-Puid``
    header Seldon's executor forwards (its request logger files the prediction under
    it, so feedback that echoes the answer matches); else one the request carried."""
    if has_request_context() and request.headers.get(PUID_HEADER):
        return request.headers[PUID_HEADER]
    sent = message.get("meta")
    puid = sent.get("puid") if isinstance(sent, dict) else None
    return puid if isinstance(puid, str) and puid else None


def _version_from_env(model_uri: str) -> int | None:
    raw = os.environ.get("TRELLIS_MODEL_VERSION")
    if raw:
        return int(raw)
    name = Path(urlparse(model_uri).path or model_uri).name
    return int(name) if name.isdigit() else None
