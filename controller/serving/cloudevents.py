"""Cluster mode's drift feed: Seldon Core's request logger posts CloudEvents here.

Each SeldonDeployment with drift monitoring renders ``graph.logger: {mode: all, url}``
pointing at this receiver (``settings.request_logger_url``, the operator's Service).
Seldon's executor posts the request and the response of every prediction as two
binary-mode CloudEvents that share ``Ce-Requestid``; ``Ce-Namespace`` and
``Ce-Inferenceservicename`` name the deployment. Ground truth arrives at
``POST /feedback/<namespace>/<name>`` in the router's format, or as the
``io.seldon.serving.feedback`` CloudEvent Seldon's executor logs for feedback sent to its
own ``/api/v1.0/feedback`` (under a new puid: the prediction's is in the body's
``response.meta.puid``).

Every replica runs this receiver behind the one Service, and none of them pairs or logs
anything: the two halves of a prediction may reach different replicas. Each event is
checked and digested here (a malformed one is answered 400 at once), appended to the
deployment's inbox in the shared store (``controller.serving.inbox``), and acknowledged
— 202 ``{"status": "accepted"}`` — only once that write returned. The deployment's
reconciler on the active replica drains the inbox into the request log
(``controller.drift_feed``). When the store refuses the write the answer is 503: Seldon's
executor logs the failure and, as it never retries, the event is lost, but nothing that
was acknowledged is. Concurrent events of one deployment share one write (a group
commit): while a write is in flight the next events queue for the one after it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from controller.objectstore import ObjectStore, ObjectStoreError
from controller.serving import inbox
from controller.serving.requestlog_read import IMAGE_SHAPE
from controller.serving.router_config import images_uint8, parse_feedback, predicted_classes

log = logging.getLogger("trellis.cloudevents")

REQUEST = "io.seldon.serving.inference.request"
RESPONSE = "io.seldon.serving.inference.response"
FEEDBACK = "io.seldon.serving.feedback"
MAX_BODY = 8 * 1024 * 1024
MAX_OBJECT = 16 * 1024 * 1024  # one inbox object holds at most this much of a batch
RETRY_AFTER_S = 5

# Told of each event the store did not take: (namespace, name, kind) -> None.
DropHook = Callable[[str, str, str], None]


@dataclass
class _Spool:
    """One deployment's events waiting for the next inbox write."""

    lines: list[tuple[bytes, asyncio.Future[None]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Receiver:
    def __init__(self, store: ObjectStore, root: str, replica: str,
                 on_drop: DropHook | None = None) -> None:
        self.store = store
        self.root = root  # the shared store's URI (settings.request_log_store_uri)
        self.replica = replica
        self.on_drop = on_drop
        self._spools: dict[tuple[str, str], _Spool] = {}
        self._seq = itertools.count()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self.event)
        app.router.add_post("/feedback/{namespace}/{name}", self.feedback)
        return app

    async def event(self, request: web.Request) -> web.Response:
        h = request.headers
        # The pairing key is the puid in Ce-Requestid; Ce-Id is new for every event.
        kind, rid = h.get("Ce-Type", ""), h.get("Ce-Requestid")
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
        digest = request_record if kind == REQUEST else response_record
        try:
            line = await asyncio.to_thread(digest, rid, time.time(), body)
        except ValueError as exc:
            return _error(400, f"cannot log this prediction: {exc}")
        return await self._accept(ns, name, "request" if kind == REQUEST else "response", line)

    async def feedback(self, request: web.Request) -> web.Response:
        return await self._feedback(request, request.match_info["namespace"],
                                    request.match_info["name"])

    async def _feedback(self, request: web.Request, ns: str, name: str) -> web.Response:
        try:
            parsed = parse_feedback(await request.json())
        except ValueError as exc:  # malformed JSON, or FeedbackError
            return _error(400, str(exc))
        if parsed is None:  # a reward without truth: nothing for the drift log
            return web.json_response({"status": "accepted"}, status=202)
        puid, labels = parsed
        return await self._accept(ns, name, "feedback",
                                  inbox.feedback_line(puid, time.time(), labels))

    async def _accept(self, ns: str, name: str, kind: str, line: bytes) -> web.Response:
        """Acknowledge the event once it is in the deployment's inbox, or answer 503."""
        try:
            await self._spool(ns, name, line)
        except ObjectStoreError as exc:
            log.warning("drift inbox of %s/%s not written, %s event refused: %s",
                        ns, name, kind, exc)
            if self.on_drop is not None:
                self.on_drop(ns, name, "unstored")
            resp = _error(503, f"the drift log's store cannot take this event now: {exc}")
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
            return resp
        return web.json_response({"status": "accepted"}, status=202)

    async def _spool(self, ns: str, name: str, line: bytes) -> None:
        spool = self._spools.setdefault((ns, name), _Spool())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        spool.lines.append((line, done))
        if spool.task is None or spool.task.done():
            spool.task = asyncio.create_task(self._write(ns, name, spool))
        await done

    async def _write(self, ns: str, name: str, spool: _Spool) -> None:
        """Write what is queued, one object per batch, until nothing is left."""
        while spool.lines:
            batch, size = [], 0
            while spool.lines and (not batch or size + len(spool.lines[0][0]) <= MAX_OBJECT):
                item = spool.lines.pop(0)
                batch.append(item)
                size += len(item[0])
            uri = inbox.inbox_object(self.root, ns, name, time_ns=time.time_ns(),
                                     replica=self.replica, seq=next(self._seq))
            error: BaseException | None = None
            try:
                await asyncio.to_thread(self.store.write, uri, b"".join(ln for ln, _ in batch))
            except ObjectStoreError as exc:
                error = exc
            except Exception as exc:  # an unexpected failure is still no acknowledgement
                log.exception("drift inbox write of %s/%s failed", ns, name)
                error = ObjectStoreError(f"{type(exc).__name__}: {exc}")
            for _, done in batch:
                if done.done():  # its request was cancelled (the client went away)
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def close(self) -> None:
        """Let the writes under way finish: their events are being acknowledged."""
        tasks = [s.task for s in self._spools.values() if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def request_record(rid: str, ts: float, body: Any) -> bytes:
    """A request event as the inbox keeps it: its inputs as uint8 images (blocking)."""
    try:
        x = images_uint8(body)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("the request carries no images (data.ndarray, data.tensor or binData)") \
            from exc
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or len(x) == 0:
        raise ValueError(f"expected images of shape (n, 64, 64, 3), got {x.shape}")
    return inbox.request_line(rid, ts, x)


def response_record(rid: str, ts: float, body: Any) -> bytes:
    """A response event as the inbox keeps it: features, version and predicted classes."""
    if not isinstance(body, dict):
        raise ValueError("the response is not a JSON object")
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    tags = meta.get("tags") if isinstance(meta.get("tags"), dict) else {}
    try:
        features = np.asarray(tags.get("trellis.features") or [], dtype=np.float32)
        version = int(tags.get("trellis.version") or 0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unreadable trellis.features or trellis.version tag: {exc}") from exc
    if features.size == 0 or features.ndim != 2:
        raise ValueError("the response carries no trellis.features tag (rows of features)")
    pred = predicted_classes(body, tags)
    if len(pred) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(pred)} predicted classes")
    return inbox.response_line(rid, ts, version, features, pred)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": {"code": status, "info": message,
                                         "status": "FAILURE"}}, status=status)
