"""The local serving endpoint: Seldon's REST API in front of stable and canary predictors.

``python -m controller.serving.router --config FILE --port P`` runs one per
ModelDeployment. It serves Seldon's paths at the root (``gateway="seldon"``) and under
``/seldon/<namespace>/<name>/`` (the ingress path ``ambassador``/``istio`` clients use).
Each prediction goes to one predictor, picked at random by traffic weight (as Seldon's
traffic split does), gets a ``puid`` (the ``Seldon-Puid`` header, and ``meta.puid``) to
send feedback with, and is logged with its drift features and inputs (``requestlog``).
The operator changes weights and predictors by rewriting the config file; the router
notices within half a second (or at once on SIGHUP) and keeps the old config if the new
one is invalid.

Error mapping: malformed or oversize requests (not JSON, nested past the decoder's
limit, a body that cannot be decoded) are refused here (400/413) and never reach a
model; a predictor's own non-200 answer is passed through as Seldon's executor does (a
model's 500 stays 500), an unreachable predictor is 502 and a slow one 504, all counted
against that predictor. A full request log never refuses a request: logging stops
(counted in ``trellis_router_log_dropped_total``, flagged by ``trellis_router_log_full``)
and the answer is the model's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

from controller.serving.requestlog import FeedbackMismatch, RequestLog, StorageFull, UnknownPuid
from controller.serving.router_config import (
    CLASS_NAMES,
    Auth,
    ConfigError,
    FeedbackError,
    RouterConfig,
    TokenFile,
    bearer,
    check_bearer,
    choose,
    client_puid,
    images_uint8,
    parse_feedback,
    predicted_classes,
    read_config,
)
from controller.serving.router_http import (
    PUID_HEADER,
    check,
    error,
    forward,
    graph_metadata,
    read_json,
)
from controller.serving.router_metrics import RouterMetrics

logger = logging.getLogger("trellis.router")

RELOAD_INTERVAL_S = 0.5
PUID = web.RequestKey("puid", str)  # this call's puid, set by the Seldon API middleware
UNLOGGED_PUIDS = 10_000  # remembered puids of requests the full log dropped (~1 MB)
SELDON_PREFIX = "/seldon/{namespace}/{name}"  # Seldon's ingress path (GetPredictionPath)


class Router:
    """One deployment's endpoint; ``seed`` makes the traffic split reproducible (tests)."""

    def __init__(self, config_path: Path, seed: int | None = None) -> None:
        self.config_path = config_path
        self._stamp = self._stat()  # before reading: a write in between is seen next cycle
        self.config, self.revision = read_config(config_path)
        self.rng = random.Random(seed)
        self.metrics = RouterMetrics()
        self.log: RequestLog | None = None
        self.log_full = False  # the last write to the log was dropped for want of room
        # Puids answered while the log was full: their feedback is dropped, not refused.
        self.unlogged: OrderedDict[str, None] = OrderedDict()
        self.tokens: TokenFile | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reload_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- configuration -----------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.config_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _apply(self, config: RouterConfig) -> None:
        """Switch to ``config``: reopen the request log and token file when they moved."""
        old = self.log
        if old is not None and old.root != config.log_dir:
            self.log = None
            await asyncio.to_thread(old.close)
        if config.log_dir is not None:
            if self.log is None:
                self.log = await asyncio.to_thread(RequestLog, config.log_dir, config.max_log_bytes)
            self.log.max_bytes = config.max_log_bytes
        if config.auth_token_file is None:
            self.tokens = None
        elif self.tokens is None or self.tokens.path != config.auth_token_file:
            self.tokens = TokenFile(config.auth_token_file)
        self.config = config

    async def reload(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config, revision = await asyncio.to_thread(read_config, self.config_path)
        except (OSError, ConfigError) as exc:
            self.metrics.config_errors.inc()
            logger.error("keeping the previous config: %s", exc)
            return
        await self._apply(config)
        self.revision = revision
        logger.info(
            "config %s: %s",
            revision[:12],
            ", ".join(f"{p.name}=v{p.version}@{p.weight}" for p in config.predictors),
        )

    async def _watch(self) -> None:
        """Poll the config's mtime (and flush the request log's buffer when due)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), RELOAD_INTERVAL_S)
            self._reload_now.clear()
            try:
                await self.reload()
                if self.log is not None:
                    await asyncio.to_thread(self.log.flush_if_due)
            except Exception:  # the watcher must outlive any one bad cycle
                logger.exception("config watch cycle failed")

    # ---- lifecycle ---------------------------------------------------------------

    async def _startup(self, app: web.Application) -> None:
        await self._apply(self.config)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=True
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload_now.set)
        self._tasks.append(asyncio.create_task(self._watch()))

    async def _cleanup(self, app: web.Application) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.log is not None:
            await asyncio.to_thread(self.log.close)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._seldon_api])
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        for prefix in ("", SELDON_PREFIX):
            for api in ("/api/v1.0", "/api/v0.1"):
                app.router.add_post(f"{prefix}{api}/predictions", self.predictions)
                app.router.add_post(f"{prefix}{api}/feedback", self.feedback)
            app.router.add_get(f"{prefix}/api/v1.0/health/status", self.health)
            app.router.add_get(f"{prefix}/api/v1.0/metadata", self.metadata)
        app.router.add_get("/health/ping", self.ping)
        app.router.add_get("/health/status", self.health)
        app.router.add_get("/router/status", self.status)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # ---- request guards ----------------------------------------------------------

    @web.middleware
    async def _seldon_api(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Seldon's API paths: only this deployment's ingress path, and a puid per call
        in the ``Seldon-Puid`` header, on errors too (the executor's ``puidHeader``)."""
        if "/api/v" not in request.path:
            return await handler(request)
        # a new one as the executor makes it: guuid.New().String()
        request[PUID] = client_puid(request.headers.get(PUID_HEADER)) or str(uuid.uuid4())
        namespace, name = request.match_info.get("namespace"), request.match_info.get("name")
        if namespace is not None and f"{namespace}/{name}" != self.config.deployment:
            message = f"no deployment {namespace}/{name} here: this is {self.config.deployment}"
            response: web.StreamResponse = self._reject(
                request.path.rsplit("/", 1)[-1], error(404, message, "NOT_FOUND")
            )
        else:
            response = await handler(request)
        response.headers.setdefault(PUID_HEADER, request[PUID])
        return response

    def _authorize(self, request: web.Request, endpoint: str) -> web.Response | None:
        if self.tokens is None:
            return None
        try:
            token = self.tokens.token()
        except (OSError, ValueError):
            logger.error("auth token file %s is unreadable", self.tokens.path)
            return self._reject(endpoint, error(503, "auth token unavailable", "AUTH_UNAVAILABLE"))
        verdict = check_bearer(bearer(request.headers), token)
        if verdict is Auth.MISSING:
            return self._reject(
                endpoint, error(401, "send Authorization: Bearer <token>", "UNAUTHENTICATED")
            )
        if verdict is Auth.WRONG:
            return self._reject(endpoint, error(403, "the bearer token is not valid", "FORBIDDEN"))
        return None

    def _reject(self, endpoint: str, response: web.Response) -> web.Response:
        self.metrics.rejected.labels(endpoint, str(response.status)).inc()
        return response

    async def _read_json(self, request: web.Request, endpoint: str) -> tuple[bytes, Any]:
        """The body and its decoded JSON, or an error response (counted as rejected)."""
        result = await read_json(request, self.config.max_body_bytes)
        if isinstance(result, web.Response):
            return b"", self._reject(endpoint, result)
        return result

    # ---- endpoints ---------------------------------------------------------------

    async def predictions(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, "predictions")
        if denied is not None:
            return denied
        body, message = await self._read_json(request, "predictions")
        if isinstance(message, web.Response):
            return message
        if not isinstance(message, dict):
            return self._reject(
                "predictions", error(400, "request body must be a JSON object", "BAD_REQUEST")
            )
        config = self.config
        predictor = choose(config.predictors, self.rng)
        if predictor is None:
            return self._reject(
                "predictions", error(503, "no predictor has traffic weight > 0", "NO_PREDICTOR")
            )
        puid = request[PUID]
        assert self._session is not None
        started = time.perf_counter()
        code, answer = await forward(self._session, predictor, body, config.timeout_s)
        elapsed = time.perf_counter() - started
        self.metrics.observe(predictor.name, predictor.version, code, elapsed)
        if isinstance(answer, web.Response):
            return answer
        meta = answer.setdefault("meta", {})
        tags = meta.setdefault("tags", {})
        features = tags.pop("trellis.features", None)
        tags.pop("trellis.feature_names", None)  # for the log only; names are in reference.json
        preds = predicted_classes(answer, tags)
        for cls in preds:
            self.metrics.predictions.labels(
                predictor.name, str(predictor.version), CLASS_NAMES[cls]
            ).inc()
        meta["puid"] = puid
        meta["routing"] = {"trellis-router": config.predictors.index(predictor)}
        meta["requestPath"] = {predictor.name: f"{config.deployment}:v{predictor.version}"}
        tags["trellis.predictor"] = predictor.name
        tags["trellis.version"] = predictor.version
        if self.log is not None:
            try:
                await asyncio.to_thread(
                    _log_request, self.log, puid, predictor.version, message, features, preds
                )
                self._logged()
            except StorageFull as exc:  # monitoring must not take serving down
                self._dropped("request", exc)
                self.unlogged[puid] = None
                if len(self.unlogged) > UNLOGGED_PUIDS:
                    self.unlogged.popitem(last=False)
        return web.json_response(answer)

    def _logged(self) -> None:
        if self.log_full:
            logger.info("request log has room again: logging resumed")
        self.log_full = False
        self.metrics.log_full.set(0)

    def _dropped(self, kind: str, exc: StorageFull) -> None:
        """Count a record the full log could not take; say so once per episode."""
        if not self.log_full:
            logger.warning("request log full, %s records are being dropped: %s", kind, exc)
        self.log_full = True
        self.metrics.log_full.set(1)
        self.metrics.log_dropped.labels(kind).inc()

    async def feedback(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, "feedback")
        if denied is not None:
            return denied
        _, message = await self._read_json(request, "feedback")
        if isinstance(message, web.Response):
            return message
        try:
            parsed = parse_feedback(message)
        except FeedbackError as exc:
            return self._reject("feedback", error(400, str(exc), "BAD_FEEDBACK"))
        if parsed is None:  # a reward without truth: Seldon's executor takes it too
            self.metrics.feedback_without_truth.inc()
            return web.json_response({"meta": {"tags": {"trellis.logged": False}}})
        puid, labels = parsed
        log = self.log
        if log is None:
            message = "request logging is off for this deployment, so no puid is known"
            return self._reject("feedback", error(404, message, "UNKNOWN_PUID"))
        try:
            record = await asyncio.to_thread(log.record_feedback, puid, labels)
            self._logged()
        except UnknownPuid:
            if puid in self.unlogged:  # answered while the log was full: same policy
                return self._feedback_dropped(puid, StorageFull("its request was not logged"))
            message = f"unknown puid {puid!r}: not served here, or dropped to respect the log bound"
            return self._reject("feedback", error(404, message, "UNKNOWN_PUID"))
        except FeedbackMismatch as exc:
            return self._reject("feedback", error(400, str(exc), "BAD_FEEDBACK"))
        except StorageFull as exc:  # the same policy as predictions: answer, do not log
            return self._feedback_dropped(puid, exc)
        for pred, label in zip(record.preds, record.labels, strict=True):
            outcome = "correct" if pred == label else "incorrect"
            self.metrics.feedback.labels(str(record.version), outcome).inc()
        tags = {"trellis.labels": list(record.labels), "trellis.version": record.version}
        return web.json_response({"meta": {"puid": puid, "tags": tags}})

    def _feedback_dropped(self, puid: str, exc: StorageFull) -> web.Response:
        self._dropped("feedback", exc)
        return web.json_response({"meta": {"puid": puid, "tags": {"trellis.logged": False}}})

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def health(self, request: web.Request) -> web.Response:
        """200 only when every predictor with traffic answers its health check."""
        live = [p for p in self.config.predictors if p.weight > 0]
        assert self._session is not None
        results = await asyncio.gather(*(check(self._session, p) for p in live))
        report = {
            p.name: {"version": p.version, "healthy": ok, "message": msg}
            for p, (ok, msg) in zip(live, results, strict=True)
        }
        healthy = bool(live) and all(ok for ok, _ in results)
        body = {"status": "ok" if healthy else "unhealthy", "predictors": report}
        if not live:
            body["message"] = "no predictor has traffic weight > 0"
        return web.json_response(body, status=200 if healthy else 503)

    async def metadata(self, request: web.Request) -> web.Response:
        """Graph metadata as the executor gives it, of the predictor with the most traffic
        (the one an ingress most likely routes to; the stable during a canary)."""
        predictors = self.config.predictors
        if not predictors:
            return error(503, "no predictor is configured", "NO_PREDICTOR")
        assert self._session is not None
        top = max(predictors, key=lambda p: p.weight)
        code, body = await graph_metadata(self._session, top)
        return web.json_response(body, status=code)

    async def status(self, request: web.Request) -> web.Response:
        """What this router serves right now (the operator waits on ``revision``)."""
        body = {
            "deployment": self.config.deployment,
            "config": str(self.config_path),
            "revision": self.revision,
        }
        body["predictors"] = self.config.to_json()["predictors"]
        if self.log is not None:
            body["log"] = {"dir": str(self.log.root), "max_bytes": self.log.max_bytes}
        return web.json_response(body)

    async def prometheus(self, request: web.Request) -> web.Response:
        if self.log is not None:
            self.metrics.log_bytes.set(self.log.used_bytes())
            self.metrics.log_max_bytes.set(self.log.max_bytes)
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        return web.Response(body=self.metrics.render(), headers=headers)


def _log_request(
    log: RequestLog, puid: str, version: int, message: Any, features: Any, preds: list[int]
) -> None:
    """Append one answered request (its inputs as uint8) to the request log."""
    x = images_uint8(message)
    n = len(x)
    feats = np.asarray(features if features is not None else np.zeros((n, 0)), dtype=np.float32)
    log.append(puid, time.time(), version, feats.reshape(n, -1), np.asarray(preds[:n]), x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="router config (JSON)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback)")
    parser.add_argument("--seed", type=int, default=None, help="seed the traffic split (tests)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    disable_created_metrics()
    try:
        router = Router(args.config, seed=args.seed)
    except (OSError, ConfigError) as exc:
        print(f"router: cannot start: {exc}", file=sys.stderr)
        return 2
    logger.info("serving %s on %s:%d", router.config.deployment, args.host, args.port)
    web.run_app(router.app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
