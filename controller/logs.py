"""Structured JSON logs carrying the object's kind, namespace and name.

Set up explicitly by the entry points (never at import time). kopf's per-object
loggers put ``k8s_ref`` (kind/namespace/name) on each record; our own loggers pass the
same with ``extra=object_ref(obj)`` (a plain ``extra={"name": ...}`` is refused by
``logging``: it would shadow the logger's name); both come out as JSON fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def object_ref(obj: dict[str, Any]) -> dict[str, Any]:
    """``extra=`` for a log line about ``obj``, in the shape kopf's loggers use."""
    meta = obj.get("metadata") or {}
    return {"k8s_ref": {"kind": obj.get("kind"), "namespace": meta.get("namespace"),
                        "name": meta.get("name")}}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            out.update({k: ref.get(k) for k in ("kind", "namespace", "name") if ref.get(k)})
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_") \
                    and key not in ("k8s_ref", "k8s_skip", "settings"):
                try:
                    json.dumps(value)
                except TypeError:
                    value = str(value)
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class WakeupNoise(logging.Filter):
    """kopf logs each handler's success at INFO. Our ``*_event`` handlers only wake a
    loop: at INFO that was a line per watch event of every object (ten thousand while a
    thousand Experiments and deployments converge), and its formatting a share of the
    operator's CPU. They are DEBUG lines; their failures stay as kopf logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "kopf.objects" and record.levelno == logging.INFO \
                and isinstance(record.msg, str) and record.msg.startswith("Handler '") \
                and record.msg.endswith("_event' succeeded."):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(*, verbose: bool = False, fmt: str | None = None) -> None:
    fmt = fmt or os.environ.get("TRELLIS_LOG_FORMAT", "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WakeupNoise())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "kubernetes", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
