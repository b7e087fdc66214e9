"""A Prometheus HTTP API stand-in serving *recorded* Seldon executor metrics.

Canary analysis in cluster mode asks Prometheus for Seldon Core's series; here no
Seldon runs, so a test records the cumulative counters a real executor would have
exported and this server answers the same instant queries with them. The queries
themselves are the operator's real ones (``PrometheusQuery``).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")


@dataclass
class Series:
    ok: int = 0
    errors: int = 0
    latency_s: float = 0.01
    classes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class FakePrometheus:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = defaultdict(Series)
        self.queries: list[str] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._started = threading.Event()

    def record(self, predictor: str, version: int, *, ok: int = 0, errors: int = 0,
               latency_s: float = 0.01, good_share: float = 0.5) -> None:
        s = self.series[(predictor, f"v{version}")]
        s.ok += ok
        s.errors += errors
        s.latency_s = latency_s
        s.classes["good"] += round(ok * good_share)
        s.classes["bad"] += ok - round(ok * good_share)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _query(self, request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        self.queries.append(q)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', q))
        s = self.series.get((labels.get("predictor_name", ""),
                             labels.get("predictor_version", "")))
        result = []
        if s is not None:
            if "_count" in q:
                result = [{"metric": {"code": "200"}, "value": [0, str(s.ok)]},
                          {"metric": {"code": "500"}, "value": [0, str(s.errors)]}]
            elif "_bucket" in q:
                total = s.ok + s.errors
                result = [{"metric": {"le": le},
                           "value": [0, str(total if le == "+Inf" or float(le) >= s.latency_s
                                            else 0)]} for le in BUCKETS]
            elif "trellis_predictions_total" in q:
                result = [{"metric": {"class": k}, "value": [0, str(v)]}
                          for k, v in s.classes.items()]
        return web.json_response({"status": "success",
                                  "data": {"resultType": "vector", "result": result}})

    def start(self) -> FakePrometheus:
        threading.Thread(target=self._run, daemon=True).start()
        self._started.wait(10)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(self._site.start())
        self.port = self._site._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    def close_port(self) -> None:
        """Stop listening (connections are refused, as when Prometheus is down); the
        recorded series stay for ``open_port``."""
        assert self._loop is not None and self._site is not None
        asyncio.run_coroutine_threadsafe(self._site.stop(), self._loop).result(10)

    def open_port(self) -> None:
        """Listen again on the same port: Prometheus is back."""
        assert self._loop is not None and self._runner is not None

        async def reopen() -> None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()

        asyncio.run_coroutine_threadsafe(reopen(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
