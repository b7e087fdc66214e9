"""The router's configuration file and its pure decisions: parsing, choice, auth.

The operator writes the file (atomically, :func:`write_config`); the router re-reads it
when it changes. Kept free of I/O beyond that file so the rules are unit-tested alone.

File format (JSON)::

    {"deployment": "ns/name",
     "predictors": [{"name": "stable", "version": 3, "url": "http://127.0.0.1:P", "weight": 90}],
     "log_dir": "/path" | null, "max_log_bytes": int,
     "auth_token_file": "/path" | null, "max_body_bytes": int,
     "timeout_s": float (optional, default 10)}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from controller.serving.requestlog_read import IMAGE_SHAPE

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
_KEYS = frozenset(
    {"deployment", "predictors", "log_dir", "max_log_bytes", "auth_token_file", "max_body_bytes",
     "timeout_s"}
)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """The file is not a valid router configuration; the message names the field."""


@dataclass(frozen=True)
class Predictor:
    name: str
    version: int
    url: str
    weight: int


@dataclass(frozen=True)
class RouterConfig:
    deployment: str
    predictors: tuple[Predictor, ...]
    log_dir: Path | None = None
    max_log_bytes: int = 0
    auth_token_file: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "predictors": [
                {"name": p.name, "version": p.version, "url": p.url, "weight": p.weight}
                for p in self.predictors
            ],
            "log_dir": str(self.log_dir) if self.log_dir else None,
            "max_log_bytes": self.max_log_bytes,
            "auth_token_file": str(self.auth_token_file) if self.auth_token_file else None,
            "max_body_bytes": self.max_body_bytes,
            "timeout_s": self.timeout_s,
        }


def _int(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _path(obj: Mapping[str, Any], key: str) -> Path | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a path or null, got {value!r}")
    return Path(value)


def parse_config(obj: object) -> RouterConfig:
    """Validate a decoded config document; unknown keys are errors (typos must show)."""
    if not isinstance(obj, dict):
        raise ConfigError("config must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
    deployment = obj.get("deployment")
    if not isinstance(deployment, str) or deployment.count("/") != 1:
        raise ConfigError(f"deployment must be 'namespace/name', got {deployment!r}")
    raw_predictors = obj.get("predictors")
    if not isinstance(raw_predictors, list):
        raise ConfigError("predictors must be a list")
    predictors = []
    for i, raw in enumerate(raw_predictors):
        where = f"predictors[{i}]."
        if not isinstance(raw, dict) or set(raw) - {"name", "version", "url", "weight"}:
            raise ConfigError(f"{where[:-1]} must be an object with name, version, url, weight")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}name must be a DNS label, got {name!r}")
        url = raw.get("url")
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}url must be an http(s) URL, got {url!r}")
        version, weight = _int(raw, "version", where), _int(raw, "weight", where)
        predictors.append(Predictor(name, version, url.rstrip("/"), weight))
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise ConfigError(f"predictor names must be unique, got {names}")
    timeout = obj.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"timeout_s must be a positive number, got {timeout!r}")
    log_dir = _path(obj, "log_dir")
    return RouterConfig(
        deployment=deployment,
        predictors=tuple(predictors),
        log_dir=log_dir,
        max_log_bytes=_int(obj, "max_log_bytes", "", minimum=1) if log_dir else 0,
        auth_token_file=_path(obj, "auth_token_file"),
        max_body_bytes=(
            _int(obj, "max_body_bytes", "", minimum=1024)
            if "max_body_bytes" in obj
            else DEFAULT_MAX_BODY_BYTES
        ),
        timeout_s=float(timeout),
    )


def read_config(path: Path) -> tuple[RouterConfig, str]:
    """The parsed file and the sha256 of its bytes (what the router reports as revision)."""
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    return parse_config(obj), hashlib.sha256(data).hexdigest()


def config_bytes(config: RouterConfig) -> bytes:
    """The file content for ``config``; its sha256 is the revision the router reports."""
    return (json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n").encode()


def write_config(path: Path, config: RouterConfig) -> str:
    """Write atomically (temp file + rename) and return the revision the router will report."""
    data = config_bytes(config)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose(predictors: Sequence[Predictor], rng: random.Random) -> Predictor | None:
    """Weighted random choice among predictors with weight > 0 (None when there are none)."""
    live = [p for p in predictors if p.weight > 0]
    if not live:
        return None
    point = rng.random() * sum(p.weight for p in live)
    for p in live:
        point -= p.weight
        if point < 0:
            return p
    return live[-1]


class Auth(Enum):
    OK = 200
    MISSING = 401
    WRONG = 403


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credentials of a call: ``Authorization``, or the token SeldonClient's
    ``SeldonCallCredentials`` sends as ``X-Auth-Token`` (read as a bearer token)."""
    if headers.get("Authorization"):
        return headers["Authorization"]
    token = headers.get("X-Auth-Token")
    return f"Bearer {token}" if token else None


_PUID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_puid(header: str | None) -> str | None:
    """A puid the client chose (Seldon's executor keeps one sent in ``Seldon-Puid``), if
    the log can key on it as it is: up to 128 of ``A-Za-z0-9._:-``; else a new one."""
    return header if header and _PUID.fullmatch(header) else None


def check_bearer(header: str | None, token: str | None) -> Auth:
    """Check an ``Authorization`` header against the token (None: auth disabled).

    The comparison is constant-time so response timing does not leak the token.
    """
    if token is None:
        return Auth.OK
    if not header:
        return Auth.MISSING
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return Auth.MISSING
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare them as bytes.
    if hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode()):
        return Auth.OK
    return Auth.WRONG


class TokenFile:
    """The bearer token, re-read when its file changes so it can rotate without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    def token(self) -> str:
        """The current token; raises OSError/ValueError when the file is missing or empty."""
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._token is None:
            token = self.path.read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"token file {self.path} is empty")
            self._token, self._stamp = token, stamp
        return self._token


class FeedbackError(ValueError):
    """A feedback body the router cannot read; the message says what to send instead."""


CLASS_NAMES = ("bad", "good")


def _label(value: object) -> int:
    if isinstance(value, list) and len(value) == 1:
        return _label(value[0])
    if (
        isinstance(value, list)
        and len(value) == len(CLASS_NAMES)
        and all(v in (0, 1) and not isinstance(v, bool) for v in value)
        and sum(value) == 1
    ):
        return value.index(1)  # one-hot, as Seldon clients send truth for probabilities
    if isinstance(value, str) and value in CLASS_NAMES:
        return CLASS_NAMES.index(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # protobuf clients (SeldonClient) send every number as a double
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CLASS_NAMES):
        return value
    raise FeedbackError(f"invalid label {value!r}: use 0 (bad) or 1 (good)")


def _truth_rows(data: Mapping[str, Any]) -> list[Any]:
    """One truth value per input row, from Seldon's ``ndarray`` or ``tensor`` form."""
    if "ndarray" in data:
        raw = data["ndarray"]
        if not isinstance(raw, list) or not raw:
            raise FeedbackError("truth.data.ndarray must be a non-empty list of labels")
        return raw
    tensor = data.get("tensor")
    if not isinstance(tensor, dict):
        raise FeedbackError("truth.data.ndarray (or truth.data.tensor) must hold the labels")
    shape, values = tensor.get("shape"), tensor.get("values")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        or not isinstance(values, list)
        or len(values) != math.prod(shape)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise FeedbackError(
            "truth.data.tensor must have a shape [n] (labels) or [n, 2] (one-hot) and that "
            "many numeric values"
        )
    if len(shape) == 1:
        return list(values)
    width = shape[1]
    return [values[i : i + width] for i in range(0, len(values), width)]


SELDON_FEEDBACK_KEYS = ("request", "response", "truth", "reward")


def parse_feedback(message: object) -> tuple[str, list[int]] | None:
    """The puid and one label per input row, from either accepted feedback form; None
    for Seldon feedback without ``truth`` (a reward only: nothing to learn from).

    Seldon's ``{"response": {"meta": {"puid": ...}}, "truth": {"data": {"ndarray": [...]}}}``
    (or ``"tensor": {"shape": [n], "values": [...]}``, as ``SeldonClient`` can send it) or
    the short ``{"puid": ..., "label": 0|1}`` (``"labels": [...]`` for a batch). Seldon's
    executor takes feedback with a reward and no truth; so does this, and refuses what
    its protobuf decoding would (a ``reward`` that is no number, a ``response`` that is
    no object).
    """
    if not isinstance(message, dict):
        raise FeedbackError("feedback must be a JSON object")
    if "puid" in message:
        puid = message["puid"]
        if "labels" in message:
            raw = message["labels"]
            if not isinstance(raw, list) or not raw:
                raise FeedbackError("labels must be a non-empty list")
        elif "label" in message:
            raw = [message["label"]]
        else:
            raise FeedbackError('feedback needs "label" (or "labels") next to "puid"')
    else:
        needs = ('feedback needs "puid" and "label", or Seldon\'s "response.meta.puid" and '
                 '"truth.data.ndarray" (or "truth.data.tensor")')
        if not any(key in message for key in SELDON_FEEDBACK_KEYS):
            raise FeedbackError(needs)
        reward, response, truth = (message.get(k) for k in ("reward", "response", "truth"))
        if reward is not None and (isinstance(reward, bool)
                                   or not isinstance(reward, int | float)):
            raise FeedbackError(f"reward must be a number, got {reward!r}")
        if response is not None and not isinstance(response, dict):
            raise FeedbackError("response must be the prediction's answer (a JSON object)")
        if truth is None:
            return None
        meta = response.get("meta") if isinstance(response, dict) else None
        if not isinstance(meta, dict) or "puid" not in meta:
            raise FeedbackError(needs)
        puid = meta["puid"]
        data = truth.get("data") if isinstance(truth, dict) else None
        raw = _truth_rows(data if isinstance(data, dict) else {})
    if not isinstance(puid, str) or not 0 < len(puid) <= 128:
        raise FeedbackError(f"puid must be the string the prediction returned, got {puid!r}")
    return puid, [_label(v) for v in raw]


def predicted_classes(answer: dict[str, Any], tags: dict[str, Any]) -> list[int]:
    """Row classes from the model's tag, else the argmax of the returned probabilities."""
    preds = tags.get("trellis.predictions")
    if isinstance(preds, list) and all(isinstance(p, int) for p in preds):
        return [p for p in preds if 0 <= p < len(CLASS_NAMES)]
    data = answer.get("data") or {}
    try:
        if "tensor" in data:
            probs = np.asarray(data["tensor"]["values"]).reshape(data["tensor"]["shape"])
        else:
            probs = np.asarray(data.get("ndarray"))
        return [int(c) for c in probs.argmax(axis=1)]
    except (ValueError, TypeError, KeyError, IndexError):
        return []


def status_info(answer: object) -> str:
    """The message of a Seldon error body (``status.info``), if there is one."""
    status = answer.get("status") if isinstance(answer, dict) else None
    return str(status.get("info", "")) if isinstance(status, dict) else ""


def images_uint8(message: dict[str, Any]) -> np.ndarray:
    """The request's images (already validated by the model) as uint8 for the log.

    A ``binData`` photo is logged as the pixels the model saw (12,288 bytes), not as its
    PNG/JPEG bytes, so the log, the inbox and the retraining export keep one format."""
    if "binData" in message:
        return bin_data_uint8(message["binData"])
    data = message["data"]
    if "ndarray" in data:  # the model's precedence: ndarray wins over a tensor next to it
        images = np.asarray(data["ndarray"], dtype=np.float32)
    else:
        tensor = data["tensor"]
        images = np.asarray(tensor["values"], dtype=np.float32).reshape(tensor["shape"])
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def bin_data_uint8(encoded: str | bytes) -> np.ndarray:
    """A ``binData`` request's one photo (base64 PNG/JPEG) as uint8 (1, 64, 64, 3).

    The model server (``serving/pumpkin_inputs.py``) enforces the rules and answers 400;
    here a photo it accepted is decoded the same way (Pillow, converted to RGB). A photo
    that does not decode to one 64×64 image is a ValueError."""
    from PIL import Image

    try:
        raw = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(raw), formats=("PNG", "JPEG")) as image:
            if image.size != IMAGE_SHAPE[1::-1]:
                raise ValueError(f"binData image is {image.width}x{image.height}, not 64x64")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, binascii.Error, TypeError) as exc:
        raise ValueError(f"binData is not a PNG/JPEG photo: {exc}") from None
    return pixels[None]
