"""Where canary analysis gets its numbers: one interface, two implementations.

Both read *cumulative* counters per predictor and version — requests, server errors,
the latency histogram, predicted classes — so a step's window is the difference
between the counters now and the baseline taken when the step started (kept on
``status.canary.baseline``, so a restarted operator resumes the same window).

- ``LocalScrape`` scrapes the local router's ``/metrics`` (Prometheus text).
- ``PrometheusQuery`` asks a Prometheus server for the same series that Seldon Core's
  executor and our model server export in a cluster.

Either raises ``MetricsUnavailable`` (transient, by intent) when its numbers cannot be
read, never a bare aiohttp error: the reconcile loop puts that on the object.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controller.canary import Window
from controller.failures import MetricsUnavailable
from controller.request_logging import LogState

# What a metrics read fails with when the server is down, slow or answers nonsense.
READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError)


@dataclass
class Counters:
    """Cumulative counts for one predictor version (JSON-able for status)."""

    requests: int = 0
    errors: int = 0
    buckets: dict[str, float] = field(default_factory=dict)  # le -> cumulative count
    classes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "buckets": dict(self.buckets), "classes": dict(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Counters:
        data = data or {}
        return cls(int(data.get("requests", 0)), int(data.get("errors", 0)),
                   {str(k): float(v) for k, v in (data.get("buckets") or {}).items()},
                   {str(k): int(v) for k, v in (data.get("classes") or {}).items()})


def _le(key: str) -> float:
    return math.inf if key in ("+Inf", "Inf", "inf") else float(key)


def quantile_ms(buckets: dict[str, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets, in milliseconds."""
    items = sorted(((_le(k), v) for k, v in buckets.items()), key=lambda kv: kv[0])
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le * 1000.0  # the highest finite bound, as Prometheus does
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return (prev_le + (le - prev_le) * frac) * 1000.0
        prev_le, prev_count = le, count
    return prev_le * 1000.0


def window(now: Counters, baseline: Counters | None) -> Window:
    """The counts between ``baseline`` and ``now``; a reset counter restarts from zero."""
    base = baseline or Counters()
    if now.requests < base.requests:  # the server restarted: its counters began again
        base = Counters()
    buckets = {k: max(0.0, v - base.buckets.get(k, 0.0)) for k, v in now.buckets.items()}
    classes = {k: max(0, v - base.classes.get(k, 0)) for k, v in now.classes.items()}
    return Window(
        requests=now.requests - base.requests,
        errors=max(0, now.errors - base.errors),
        latency_p99_ms=quantile_ms(buckets, 0.99),
        class_counts={k: v for k, v in classes.items() if v},
    )


class MetricsSource(Protocol):
    async def counters(self, deployment: dict[str, Any], predictor: str,
                       version: int) -> Counters: ...


# ----------------------------------------------------------------------- local
def parse_router_metrics(text: str, predictor: str, version: int) -> Counters:
    """Counters for one predictor version out of the router's Prometheus text."""
    out = Counters()
    want = {"predictor": predictor, "version": str(version)}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if any(labels.get(k) != v for k, v in want.items()):
                continue
            if sample.name == "trellis_router_requests_total":
                out.requests += int(sample.value)
                if labels.get("code", "").startswith("5"):
                    out.errors += int(sample.value)
            elif sample.name == "trellis_router_request_duration_seconds_bucket":
                le = labels["le"]
                out.buckets[le] = out.buckets.get(le, 0.0) + sample.value
            elif sample.name == "trellis_router_predictions_total":
                cls = labels.get("class", "?")
                out.classes[cls] = out.classes.get(cls, 0) + int(sample.value)
    return out


def parse_log_state(text: str) -> LogState:
    """The request log's state out of the router's Prometheus text."""
    values: dict[str, float] = {}
    dropped = {"request": 0, "feedback": 0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "trellis_router_log_dropped_total":
                kind = sample.labels.get("kind", "")
                dropped[kind] = dropped.get(kind, 0) + int(sample.value)
            else:
                values[sample.name] = sample.value
    return LogState(full=values.get("trellis_router_log_full", 0.0) >= 1.0,
                    dropped_requests=dropped["request"], dropped_feedback=dropped["feedback"],
                    used_bytes=int(values.get("trellis_router_log_bytes", 0)),
                    max_bytes=int(values.get("trellis_router_log_max_bytes", 0)))


class LocalScrape:
    """Scrapes the router whose metrics URL the serving backend reports on status."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def counters(self, deployment: dict[str, Any], predictor: str,
                       version: int) -> Counters:
        return parse_router_metrics(await self._scrape(deployment), predictor, version)

    async def log_state(self, deployment: dict[str, Any]) -> LogState:
        return parse_log_state(await self._scrape(deployment))

    async def _scrape(self, deployment: dict[str, Any]) -> str:
        from controller.serving.drivers import base_url

        endpoint = (deployment.get("status") or {}).get("endpoint") or ""
        url = base_url(endpoint).rstrip("/") + "/metrics"
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session, \
                    session.get(url) as resp:
                resp.raise_for_status()
                return await resp.text()
        except READ_ERRORS as exc:
            raise MetricsUnavailable(f"the router's metrics at {url} cannot be read: "
                                     f"{_said(exc)}") from exc


# ------------------------------------------------------------------ Prometheus
SELDON_REQUESTS = "seldon_api_executor_server_requests_seconds"
PREDICTIONS = "trellis_predictions_total"


class PrometheusQuery:
    """Instant queries against Prometheus for Seldon Core's executor series.

    Seldon labels its executor metrics with ``deployment_name``, ``predictor_name`` and
    ``predictor_version`` (the predictor's ``version`` annotation, which we set to ``vN``).
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def selector(self, deployment: dict[str, Any], predictor: str, version: int) -> str:
        meta = deployment["metadata"]
        return (f'namespace="{meta["namespace"]}",deployment_name="{meta["name"]}",'
                f'predictor_name="{predictor}",predictor_version="v{version}"')

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> list[dict]:
        async with session.get(f"{self.base_url}/api/v1/query", params={"query": promql}) as r:
            r.raise_for_status()
            body = await r.json()
        if body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body.get('error', body)}")
        return body["data"]["result"]

    async def counters(self, deployment: dict[str, Any], predictor: str,
                       version: int) -> Counters:
        try:
            return await self._counters(deployment, predictor, version)
        except READ_ERRORS as exc:
            raise MetricsUnavailable(f"Prometheus at {self.base_url} cannot be queried: "
                                     f"{_said(exc)}") from exc

    async def _counters(self, deployment: dict[str, Any], predictor: str,
                        version: int) -> Counters:
        sel = self.selector(deployment, predictor, version)
        out = Counters()
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            requests = f"sum by (code) ({SELDON_REQUESTS}_count{{{sel}}})"
            buckets = f"sum by (le) ({SELDON_REQUESTS}_bucket{{{sel}}})"
            classes = f"sum by (class) ({PREDICTIONS}{{{sel}}})"
            for row in await self._query(session, requests):
                value = int(float(row["value"][1]))
                out.requests += value
                if row["metric"].get("code", "").startswith("5"):
                    out.errors += value
            for row in await self._query(session, buckets):
                out.buckets[row["metric"]["le"]] = float(row["value"][1])
            for row in await self._query(session, classes):
                out.classes[row["metric"].get("class", "?")] = int(float(row["value"][1]))
        return out


def _said(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__  # a timeout says nothing by itself
