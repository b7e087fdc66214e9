"""The operator's own HTTP endpoint: ``GET /metrics`` and ``GET /healthz``.

Prometheus scrapes ``/metrics`` (the ServiceMonitor in ``manifests/``); the Deployment's
readiness probe asks ``/healthz``. Liveness stays with kopf's probe endpoint
(``--liveness-port``), which checks the operator's event loop and handlers; this server
only says the process is up and its context is built. It runs on every replica — a
standby (paused by kopf peering) still answers, so both pods stay Ready and a rolling
update never waits for a leader change.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from controller.metrics import OperatorMetrics

log = logging.getLogger("trellis.http")


class OperatorHttpServer:
    """An aiohttp server for the metrics and health endpoints; ``port`` 0 picks a free one."""

    def __init__(self, metrics: OperatorMetrics, *, host: str = "0.0.0.0", port: int = 8000
                 ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> int:
        """Listen; returns the bound port (the chosen one when ``port`` was 0)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # (host, port[, ...]) of each listening socket
            self.port = int(runner.addresses[0][1])
        log.info("metrics endpoint listening on %s:%d (GET /metrics, /healthz)",
                 self.host, self.port, extra={"port": self.port})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")
