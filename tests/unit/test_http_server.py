"""The operator's HTTP endpoint: port 0 binds a free port, /metrics is Prometheus text."""

from __future__ import annotations

import asyncio

import aiohttp

from controller.http_server import OperatorHttpServer
from controller.metrics import OperatorMetrics


async def _exercise() -> tuple[int, str, str, int, str]:
    metrics = OperatorMetrics()
    metrics.record_reconcile("Experiment", 0.02, ok=True)
    metrics.runs.labels("started").inc()
    server = OperatorHttpServer(metrics, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                body, ctype = await resp.text(), resp.headers["Content-Type"]
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health_status, health = resp.status, await resp.text()
    finally:
        await server.stop()
    return port, body, ctype, health_status, health


def test_metrics_and_health_on_a_chosen_free_port() -> None:
    port, body, ctype, health_status, health = asyncio.run(_exercise())
    assert port > 0
    assert ctype.startswith("text/plain")
    assert 'trellis_reconciles_total{kind="Experiment",result="success"} 1.0' in body
    assert 'trellis_training_runs_total{outcome="started"} 1.0' in body
    assert (health_status, health) == (200, "ok\n")
