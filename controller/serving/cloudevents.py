"""Cluster mode's drift feed: Seldon Core's request logger posts CloudEvents here.

Each SeldonDeployment with drift monitoring renders ``graph.logger: {mode: all, url}``
pointing at this receiver (``settings.request_logger_url``). Seldon's executor posts
the request and the response of every prediction as two binary-mode CloudEvents that
share ``Ce-Requestid``; ``Ce-Namespace`` and ``Ce-Inferenceservicename`` name the
deployment. The receiver joins the pair and appends the row to the same request log the
local router writes, so the drift monitor reads one format whatever the backend.
Ground truth arrives at ``POST /feedback/<namespace>/<name>`` in the router's format,
or as the ``io.seldon.serving.feedback`` CloudEvent Seldon's executor logs for feedback
sent to its own ``/api/v1.0/feedback`` (under a new puid: the prediction's is in the
body's ``response.meta.puid``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from controller.serving.requestlog import FeedbackMismatch, RequestLog, StorageFull, UnknownPuid
from controller.serving.requestlog_read import deployment_log_dir
from controller.serving.router_config import images_uint8, parse_feedback, predicted_classes

log = logging.getLogger("trellis.cloudevents")

REQUEST = "io.seldon.serving.inference.request"
RESPONSE = "io.seldon.serving.inference.response"
FEEDBACK = "io.seldon.serving.feedback"
MAX_PENDING = 4096  # half-pairs kept while their other half is in flight
MAX_BODY = 8 * 1024 * 1024


class Receiver:
    def __init__(self, root: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.logs: dict[tuple[str, str], RequestLog] = {}
        self._logs_lock = threading.Lock()
        self.pending: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self.event)
        app.router.add_post("/feedback/{namespace}/{name}", self.feedback)
        return app

    def log_for(self, namespace: str, name: str) -> RequestLog:
        """One writer per log: two writers on a directory would reuse chunk numbers."""
        key = (namespace, name)
        with self._logs_lock:  # called from worker threads
            if key not in self.logs:
                self.logs[key] = RequestLog(deployment_log_dir(self.root, namespace, name),
                                            self.max_bytes)
            return self.logs[key]

    async def event(self, request: web.Request) -> web.Response:
        h = request.headers
        kind, rid = h.get("Ce-Type", ""), h.get("Ce-Requestid") or h.get("Ce-Id")
        ns, name = h.get("Ce-Namespace"), h.get("Ce-Inferenceservicename")
        if kind == FEEDBACK and ns and name:
            return await self._feedback(request, ns, name)
        if kind not in (REQUEST, RESPONSE) or not rid or not ns or not name:
            return _error(400, "expected a Seldon request-logger CloudEvent (Ce-Type, "
                          "Ce-Requestid, Ce-Namespace, Ce-Inferenceservicename)")
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(400, f"malformed JSON body: {exc}")
        key = f"{ns}/{name}/{rid}"
        other = self.pending.pop(key, None)
        if other is None or other[0] == kind:
            self.pending[key] = (kind, body)
            while len(self.pending) > MAX_PENDING:
                self.pending.popitem(last=False)
            return web.json_response({"status": "pending"}, status=202)
        req, resp = (body, other[1]) if kind == REQUEST else (other[1], body)
        try:
            await asyncio.to_thread(self._append, ns, name, rid, req, resp)
        except StorageFull as exc:
            return _error(507, f"request log full: {exc}")
        except ValueError as exc:
            return _error(400, f"cannot log this prediction: {exc}")
        return web.json_response({"status": "logged"}, status=201)

    def _append(self, ns: str, name: str, rid: str, req: dict[str, Any],
                resp: dict[str, Any]) -> None:
        x = images_uint8(req)
        tags = (resp.get("meta") or {}).get("tags") or {}
        features = np.asarray(tags.get("trellis.features") or [], dtype=np.float32)
        if features.size == 0:
            raise ValueError("the response carries no trellis.features tag")
        version = int(tags.get("trellis.version") or 0)
        pred = np.asarray(predicted_classes(resp, tags), dtype=np.int64)
        self.log_for(ns, name).append(rid, time.time(), version, features, pred, x)

    async def feedback(self, request: web.Request) -> web.Response:
        return await self._feedback(request, request.match_info["namespace"],
                                    request.match_info["name"])

    async def _feedback(self, request: web.Request, ns: str, name: str) -> web.Response:
        try:
            puid, labels = parse_feedback(await request.json())
        except ValueError as exc:  # malformed JSON, or FeedbackError
            return _error(400, str(exc))
        try:
            await asyncio.to_thread(
                lambda: self.log_for(ns, name).record_feedback(puid, labels))
        except UnknownPuid:
            return _error(404, f"no logged prediction with puid {puid!r}")
        except FeedbackMismatch as exc:
            return _error(400, str(exc))
        except StorageFull as exc:
            return _error(507, f"request log full: {exc}")
        return web.json_response({"status": "recorded"})

    def close(self) -> None:
        for rl in self.logs.values():
            rl.close()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": {"code": status, "info": message,
                                         "status": "FAILURE"}}, status=status)
