"""A Prometheus HTTP API stand-in serving *recorded* Seldon executor metrics.

Canary analysis in cluster mode asks Prometheus for Seldon Core's series; here no
Seldon runs, so a test records the counters a real executor would have exported (with
their labels, feedback calls and pod restarts included) and this server evaluates the
operator's real queries (``PrometheusQuery``) over them. It understands exactly the
shape those queries take, ``sum by (L) (increase(metric{a="b",...}[Nms]))`` at a given
``time``, and answers anything else with an error. Unlike Prometheus, ``increase`` here
is exact (no extrapolation to the window's edges); a counter that drops counts as reset.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import defaultdict

from aiohttp import web

BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
EXECUTOR = "seldon_api_executor_server_requests_seconds"
QUERY = re.compile(r'^sum by \((\w+)\) \(increase\((\w+)\{([^}]*)\}\[(\d+)ms\]\)\)$')
MATCHER = re.compile(r'(\w+)="([^"]*)"')

Labels = frozenset[tuple[str, str]]


def increase(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """How much a counter grew in (start, end]; a drop is a reset (the pod restarted)."""
    prev = 0.0
    total = 0.0
    for t, v in samples:
        if t <= start:
            prev = v
        elif t <= end:
            total += v - prev if v >= prev else v
            prev = v
    return total


class FakePrometheus:
    def __init__(self, common_labels: dict[str, str] | None = None,
                 deployment: str = "classifier") -> None:
        # What the scrape adds to every series (e.g. namespace); the executor's own.
        self.common = dict(common_labels or {})
        self.deployment = deployment
        self.samples: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        self.queries: list[str] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._started = threading.Event()

    def _add(self, t: float, name: str, labels: dict[str, str], delta: float) -> None:
        key = frozenset({"__name__": name, **labels}.items())
        series = self.samples[key]
        series.append((t, (series[-1][1] if series else 0.0) + delta))

    def record(self, predictor: str, version: int, *, ok: int = 0, errors: int = 0,
               latency_s: float = 0.01, good_share: float = 0.5,
               feedback_errors: int = 0) -> None:
        """Requests to one predictor version, as its executor and model server count them;
        ``feedback_errors`` failed feedback calls go to the same histogram."""
        base = {**self.common, "deployment_name": self.deployment,
                "predictor_name": predictor, "predictor_version": f"v{version}"}
        t = time.time()
        with self._lock:
            for service, code, n in (("predictions", "200", ok), ("predictions", "500", errors),
                                     ("feedback", "500", feedback_errors)):
                if not n:
                    continue
                lab = {**base, "service": service, "method": "POST", "code": code}
                self._add(t, f"{EXECUTOR}_count", lab, n)
                for le in BUCKETS:
                    within = le == "+Inf" or float(le) >= latency_s
                    self._add(t, f"{EXECUTOR}_bucket", {**lab, "le": le}, n if within else 0)
            good = round(ok * good_share)
            for cls, n in (("good", good), ("bad", ok - good)):
                self._add(t, "trellis_predictions_total", {**base, "class": cls}, n)

    def restart(self, predictor: str, version: int) -> None:
        """The predictor's pod restarts: every counter it exports starts again at zero."""
        t = time.time()
        want = {("predictor_name", predictor), ("predictor_version", f"v{version}")}
        with self._lock:
            for key, series in self.samples.items():
                if want <= key:
                    series.append((t, 0.0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def evaluate(self, query: str, at: float) -> list[dict]:
        m = QUERY.match(query)
        if m is None:
            raise ValueError(f"the fake Prometheus cannot evaluate {query!r}")
        by, name, matchers, range_ms = m.groups()
        want = {("__name__", name), *MATCHER.findall(matchers)}
        sums: dict[str, float] = defaultdict(float)
        with self._lock:
            for key, series in self.samples.items():
                if want <= key:
                    sums[dict(key).get(by, "")] += increase(series, at - int(range_ms) / 1000, at)
        return [{"metric": {by: k}, "value": [at, repr(v)]} for k, v in sums.items()]

    async def _query(self, request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        self.queries.append(q)
        at = float(request.query.get("time") or time.time())
        try:
            result = self.evaluate(q, at)
        except ValueError as exc:
            return web.json_response({"status": "error", "errorType": "bad_data",
                                      "error": str(exc)}, status=400)
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
