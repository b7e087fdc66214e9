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

A full request log never fails an event: Seldon's executor would log the failure for a
prediction it has already answered, and monitoring must not look like serving trouble.
The record is dropped, the answer is 200 ``{"status": "dropped"}``, the drop is counted
(``trellis_request_log_dropped_total``) and ``log_state`` reports it for the
ModelDeployment's RequestLogging condition, as the local router does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from controller.request_logging import LogState
from controller.serving.requestlog import FeedbackMismatch, RequestLog, StorageFull, UnknownPuid
from controller.serving.requestlog_read import deployment_log_dir
from controller.serving.router_config import images_uint8, parse_feedback, predicted_classes

log = logging.getLogger("trellis.cloudevents")

REQUEST = "io.seldon.serving.inference.request"
RESPONSE = "io.seldon.serving.inference.response"
FEEDBACK = "io.seldon.serving.feedback"
MAX_PENDING = 4096  # half-pairs kept while their other half is in flight
MAX_BODY = 8 * 1024 * 1024
FLUSH_CHECK_S = 0.5  # how often buffered rows are checked for their flush deadline
UNLOGGED_PUIDS = 10_000  # per deployment: puids dropped while full (their feedback too)

# Told of each record a full log drops: (namespace, name, kind) -> None.
DropHook = Callable[[str, str, str], None]


@dataclass
class _Tally:
    """One deployment's drops since the receiver started (the RequestLogging inputs)."""

    full: bool = False  # the last write was dropped for want of room
    dropped: dict[str, int] = field(default_factory=lambda: {"request": 0, "feedback": 0})
    unlogged: OrderedDict[str, None] = field(default_factory=OrderedDict)


class Receiver:
    def __init__(self, root: Path, max_bytes: int = 256 * 1024 * 1024,
                 on_drop: DropHook | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes  # until the reconciler tells a deployment's bound
        self.on_drop = on_drop
        self.logs: dict[tuple[str, str], RequestLog] = {}
        self.bounds: dict[tuple[str, str], int] = {}
        self.tallies: dict[tuple[str, str], _Tally] = {}
        self._logs_lock = threading.Lock()
        self.pending: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self.event)
        app.router.add_post("/feedback/{namespace}/{name}", self.feedback)
        app.cleanup_ctx.append(self._flushing)
        return app

    async def _flushing(self, _app: web.Application) -> AsyncIterator[None]:
        """Flush each log's buffered rows once they have waited their ``flush_seconds``:
        a trickle of traffic that never fills a chunk still reaches the drift monitor."""
        task = asyncio.create_task(self._flush_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_CHECK_S)
            with self._logs_lock:
                logs = list(self.logs.values())
            for rl in logs:
                try:
                    await asyncio.to_thread(rl.flush_if_due)
                except Exception:  # the loop must outlive one log's bad moment
                    log.exception("request log flush failed")

    def log_for(self, namespace: str, name: str) -> RequestLog:
        """One writer per log: two writers on a directory would reuse chunk numbers."""
        key = (namespace, name)
        with self._logs_lock:  # called from worker threads
            if key not in self.logs:
                self.logs[key] = RequestLog(deployment_log_dir(self.root, namespace, name),
                                            self.bounds.get(key, self.max_bytes))
            return self.logs[key]

    def set_bound(self, namespace: str, name: str, max_bytes: int) -> None:
        """The deployment's ``spec.drift.storage.maxBytes``, applied to its open log too."""
        key = (namespace, name)
        with self._logs_lock:
            self.bounds[key] = max_bytes
            if key in self.logs:
                self.logs[key].max_bytes = max_bytes

    def log_state(self, namespace: str, name: str) -> LogState:
        """What the RequestLogging condition needs (blocks on the log's lock: a thread)."""
        key = (namespace, name)
        with self._logs_lock:
            rl, tally = self.logs.get(key), self.tallies.get(key) or _Tally()
            bound = self.bounds.get(key, self.max_bytes)
        return LogState(full=tally.full, dropped_requests=tally.dropped["request"],
                        dropped_feedback=tally.dropped["feedback"],
                        used_bytes=rl.used_bytes() if rl is not None else 0,
                        max_bytes=bound, writer="request-log receiver")

    def forget(self, namespace: str, name: str) -> None:
        """A deleted deployment: close its log, drop what was kept about it."""
        key = (namespace, name)
        with self._logs_lock:
            rl = self.logs.pop(key, None)
            self.bounds.pop(key, None)
            self.tallies.pop(key, None)
        if rl is not None:
            rl.close()

    def _logged(self, ns: str, name: str) -> None:
        tally = self.tallies.get((ns, name))
        if tally is not None and tally.full:
            log.info("request log of %s/%s has room again: logging resumed", ns, name)
            tally.full = False

    def _dropped(self, ns: str, name: str, kind: str, puid: str, exc: StorageFull
                 ) -> web.Response:
        """Count a record the full log could not take; say so once per episode."""
        tally = self.tallies.setdefault((ns, name), _Tally())
        if not tally.full:
            log.warning("request log of %s/%s full, %s records are being dropped: %s",
                        ns, name, kind, exc)
        tally.full = True
        tally.dropped[kind] += 1
        if kind == "request":
            tally.unlogged[puid] = None
            if len(tally.unlogged) > UNLOGGED_PUIDS:
                tally.unlogged.popitem(last=False)
        if self.on_drop is not None:
            self.on_drop(ns, name, kind)
        return web.json_response({"status": "dropped", "info": f"request log full: {exc}"})

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
        except StorageFull as exc:  # monitoring must not take serving down
            return self._dropped(ns, name, "request", rid, exc)
        except ValueError as exc:
            return _error(400, f"cannot log this prediction: {exc}")
        self._logged(ns, name)
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
            tally = self.tallies.get((ns, name))
            if tally is not None and puid in tally.unlogged:  # dropped while full: the same
                return self._dropped(ns, name, "feedback", puid,
                                     StorageFull("its prediction was not logged"))
            return _error(404, f"no logged prediction with puid {puid!r}")
        except FeedbackMismatch as exc:
            return _error(400, str(exc))
        except StorageFull as exc:  # the same policy as predictions: answer, do not log
            return self._dropped(ns, name, "feedback", puid, exc)
        self._logged(ns, name)
        return web.json_response({"status": "recorded"})

    def close(self) -> None:
        for rl in self.logs.values():
            rl.close()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": {"code": status, "info": message,
                                         "status": "FAILURE"}}, status=status)
