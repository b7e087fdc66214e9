"""A stand-in for Seldon Core 1.17.1's executor, for its metrics: a small HTTP proxy in
front of a real model server that counts every call exactly as the executor does.

Seldon's executor (the Go service orchestrator in every predictor pod) cannot be built
here, and canary analysis queries its series. This proxy takes its place in front of a
``seldon-core-microservice`` and forwards each call the way the executor calls a MODEL
unit (``/predict``, ``/send-feedback``, ``/metadata``; body, content type and status code
passed through; ``Seldon-Puid`` set when the client sent none). What it exports, at the
executor's ``--prometheus_path`` on its HTTP port (Seldon's operator passes
``/prometheus``), follows ``executor/api/metric`` and ``executor/api/rest/server.go`` of
v1.17.1 (see /work/shared/seldon-contract.md):

- the histogram ``seldon_api_executor_server_requests_seconds_{bucket,count,sum}`` with
  the executor's ``DefBuckets`` (0.005 … 10 s) and labels ``deployment_name`` (the
  SeldonDeployment's name), ``predictor_name``, ``predictor_version`` (the predictor's
  ``version`` *annotation*: a predictor with only ``labels.version`` exports ``""``),
  ``service`` (``predictions``, ``feedback``, ``status``, ``metadata``), ``method`` (as
  promhttp writes it: ``post``, ``get``) and ``code`` (the HTTP status, ``"200"``);
- the summary ``seldon_api_executor_server_requests_seconds_summary`` with the same labels
  and the executor's objectives (0.5 … 1.0 over the last 10 minutes; computed exactly
  here, within the error the Go summary allows).

Series appear on a label set's first request, as with client_golang's vectors. Counters
live in the process: a restarted exporter starts again at 0, as a restarted pod does.
Left out: the client histogram (executor → model), Go runtime metrics, gRPC, request
logging and graphs of more than one unit.

Standard library only, so the same file runs beside a model server anywhere (on this
host or in the model-server image): ``ENGINE_PREDICTOR=BASE64_JSON python
executor_metrics.py --sdep NAME --predictor NAME --upstream http://127.0.0.1:9000
--http_port 8000``, the predictor given as Seldon's operator gives it (``encode_predictor``).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import http.client
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SERVER_METRIC = "seldon_api_executor_server_requests_seconds"
# executor/api/metric/constants.go (v1.17.1)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OBJECTIVES = (0.5, 0.75, 0.9, 0.98, 0.99, 1.0)
SUMMARY_MAX_AGE_S = 600.0  # client_golang's DefMaxAge
LABELS = ("deployment_name", "predictor_name", "predictor_version", "service", "method",
          "code")
PUID_HEADER = "Seldon-Puid"

# Executor path -> (service label, the model server's path; None: answered by the executor)
ROUTES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("POST", "/api/v0.1/predictions"): ("predictions", "/predict"),
    ("POST", "/api/v1.0/predictions"): ("predictions", "/predict"),
    ("POST", "/api/v0.1/feedback"): ("feedback", "/send-feedback"),
    ("POST", "/api/v1.0/feedback"): ("feedback", "/send-feedback"),
    ("GET", "/api/v1.0/status"): ("status", None),
    ("GET", "/api/v1.0/health/status"): ("status", None),
    ("GET", "/api/v1.0/metadata"): ("metadata", "/metadata"),
}


def predictor_labels(deployment: str, predictor: dict[str, Any]) -> dict[str, str]:
    """The executor's constant labels: the version is the predictor's *annotation*."""
    return {"deployment_name": deployment, "predictor_name": predictor.get("name", ""),
            "predictor_version": (predictor.get("annotations") or {}).get("version", "")}


def go_float(value: float) -> str:
    """A number as client_golang writes it (``1``, ``2.5``, ``+Inf``, ``NaN``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items())) + "}"


class _Series:
    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.sum = 0.0
        self.recent: deque[tuple[float, float]] = deque()  # (monotonic time, seconds)


class ServerMetrics:
    """The executor's server histogram and summary for one predictor (thread-safe)."""

    def __init__(self, deployment: str, predictor: dict[str, Any]) -> None:
        self.constant = predictor_labels(deployment, predictor)
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._lock = threading.Lock()

    def observe(self, service: str, method: str, code: int, seconds: float) -> None:
        key = (service, method.lower(), str(code))
        now = time.monotonic()
        with self._lock:
            series = self._series.setdefault(key, _Series())
            index = bisect.bisect_left(BUCKETS, seconds)  # le is inclusive
            for i in range(index, len(BUCKETS)):
                series.buckets[i] += 1
            series.count += 1
            series.sum += seconds
            series.recent.append((now, seconds))
            self._expire(series, now)

    def _expire(self, series: _Series, now: float) -> None:
        while series.recent and series.recent[0][0] < now - SUMMARY_MAX_AGE_S:
            series.recent.popleft()

    def exposition(self) -> str:
        """Prometheus text format 0.0.4, as ``promhttp.Handler()`` serves it."""
        now = time.monotonic()
        hist = [f"# HELP {SERVER_METRIC} A histogram of latencies for executor server",
                f"# TYPE {SERVER_METRIC} histogram"]
        summ = [f"# HELP {SERVER_METRIC}_summary A summary of latencies for executor server",
                f"# TYPE {SERVER_METRIC}_summary summary"]
        with self._lock:
            for (service, method, code), s in sorted(self._series.items()):
                self._expire(s, now)
                labels = {**self.constant, "service": service, "method": method, "code": code}
                for le, n in zip(BUCKETS, s.buckets, strict=True):
                    hist.append(f"{SERVER_METRIC}_bucket{_labels({**labels, 'le': go_float(le)})}"
                                f" {n}")
                hist.append(f"{SERVER_METRIC}_bucket{_labels({**labels, 'le': '+Inf'})} "
                            f"{s.count}")
                hist.append(f"{SERVER_METRIC}_sum{_labels(labels)} {go_float(s.sum)}")
                hist.append(f"{SERVER_METRIC}_count{_labels(labels)} {s.count}")
                window = sorted(v for _, v in s.recent)
                for q in OBJECTIVES:
                    value = quantile(window, q)
                    summ.append(f"{SERVER_METRIC}_summary"
                                f"{_labels({**labels, 'quantile': go_float(q)})} "
                                f"{go_float(value)}")
                summ.append(f"{SERVER_METRIC}_summary_sum{_labels(labels)} {go_float(s.sum)}")
                summ.append(f"{SERVER_METRIC}_summary_count{_labels(labels)} {s.count}")
        if not self._series:
            return ""  # a vector with no series writes nothing, not even its HELP
        return "\n".join(hist + summ) + "\n"


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted observations (NaN when there are none, as Go's)."""
    if not ordered:
        return math.nan
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


class Executor:
    """Forwards to the model server at ``upstream`` and counts every instrumented call."""

    def __init__(self, deployment: str, predictor: dict[str, Any], upstream: str,
                 prometheus_path: str = "/prometheus", timeout_s: float = 10.0) -> None:
        self.metrics = ServerMetrics(deployment, predictor)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 9000)
        self.prometheus_path = prometheus_path
        self.timeout_s = timeout_s

    def ready(self) -> bool:
        """The executor's readiness: its model unit accepts a TCP connection."""
        try:
            with socket.create_connection(self.upstream, timeout=1):
                return True
        except OSError:
            return False

    def forward(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes, str]:
        """(status, body, content type) of the model server's answer; 500 with the
        executor's error payload when it cannot be reached."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.timeout_s)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type") or ""
        except (OSError, http.client.HTTPException) as exc:
            payload = {"status": {"code": 500, "info": f"{type(exc).__name__}: {exc}",
                                  "status": "FAILURE"}}
            return 500, json.dumps(payload).encode(), "application/json"
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        ex = self.server.executor
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if method == "GET" and path == ex.prometheus_path:
            self._send(200, ex.metrics.exposition().encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
            return
        if method == "GET" and path in ("/ready", "/live"):
            self._send(200 if path == "/live" or ex.ready() else 503, b"", "text/plain")
            return
        route = ROUTES.get((method, path))
        if route is None:
            self._send(404 if all(p != path for _, p in ROUTES) else 405,
                       b"404 page not found\n", "text/plain")
            return
        started = time.perf_counter()
        service, target = route
        puid = self.headers.get(PUID_HEADER) or str(uuid.uuid4())
        if target is None:  # the executor answers status itself
            status, answer, ctype = (200 if ex.ready() else 503), b"", ""
        else:
            headers = {PUID_HEADER: puid}
            if body is not None:
                headers["Content-Type"] = self.headers.get("Content-Type", "application/json")
            status, answer, ctype = ex.forward(method, target, body, headers)
        try:
            self._send(status, answer, ctype or "application/json", {PUID_HEADER: puid})
        finally:
            ex.metrics.observe(service, method, status, time.perf_counter() - started)

    def _send(self, status: int, body: bytes, ctype: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], executor: Executor) -> None:
        self.executor = executor
        super().__init__(address, _Handler)


def serve(executor: Executor, host: str, port: int) -> _Server:
    """A started server (its own thread); ``shutdown()`` stops it."""
    server = _Server((host, port), executor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def encode_predictor(predictor: dict[str, Any]) -> str:
    """The predictor as Seldon's operator hands it to the executor: base64 JSON in
    ``ENGINE_PREDICTOR``, with ``traffic`` and ``replicas`` set to 0 so that neither changes
    the pod template (``createEngineContainer``): a weight change rolls no pod."""
    engine = {**predictor, "traffic": 0, "replicas": 0}
    return base64.b64encode(json.dumps(engine).encode()).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The executor's own flag names, for what this stand-in uses of them.
    parser.add_argument("--sdep", required=True, help="the SeldonDeployment's name")
    parser.add_argument("--namespace", default="", help="unused in metrics, as in Seldon")
    parser.add_argument("--predictor", required=True,
                        help="the predictor's name; its spec is ENGINE_PREDICTOR's")
    parser.add_argument("--http_port", type=int, default=8000)
    parser.add_argument("--prometheus_path", default="/prometheus")
    parser.add_argument("--upstream", default="http://127.0.0.1:9000",
                        help="the model server (the graph's one MODEL unit)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--timeout_s", type=float, default=10.0)
    args = parser.parse_args(argv)
    predictor = json.loads(base64.b64decode(os.environ["ENGINE_PREDICTOR"]))
    if predictor.get("name") != args.predictor:
        parser.error(f"ENGINE_PREDICTOR is {predictor.get('name')!r}, not {args.predictor!r}")
    executor = Executor(args.sdep, predictor, args.upstream, args.prometheus_path,
                        args.timeout_s)
    server = _Server((args.host, args.http_port), executor)
    print(f"executor stand-in for {args.sdep}/{predictor.get('name')} on "
          f"{args.host}:{args.http_port} -> {args.upstream}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
