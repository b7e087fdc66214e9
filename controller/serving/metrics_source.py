"""Where canary analysis gets its numbers: one interface, two implementations.

Both count requests, server errors, the latency histogram and predicted classes per
predictor and version over a step's window; ``status.canary.baseline`` keeps where the
window began, so a restarted operator resumes the same window.

- ``LocalScrape`` scrapes the local router's ``/metrics`` (Prometheus text): cumulative
  counters, differenced against the baseline counters taken when the step started.
- ``PrometheusQuery`` asks a Prometheus server for ``increase()`` over the window of the
  series that Seldon Core's executor and our model server export in a cluster, and for
  the p99 as ``histogram_quantile`` over the same window (the baseline is the window's
  start time).

Either raises ``MetricsUnavailable`` (transient, by intent) when its numbers cannot be
read, never a bare aiohttp error: the reconcile loop puts that on the object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
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
    # A windowed source's own p99 over the window (Prometheus' histogram_quantile), used
    # instead of interpolating ``buckets``; never kept in a baseline.
    p99_ms: float | None = None

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
        latency_p99_ms=now.p99_ms if now.p99_ms is not None else quantile_ms(buckets, 0.99),
        class_counts={k: v for k, v in classes.items() if v},
    )


class MetricsSource(Protocol):
    # True: ``counters`` answers for the window ``since``..``until`` (no baseline needed);
    # False: cumulative counters, differenced against the step's baseline.
    windowed: bool

    async def counters(self, deployment: dict[str, Any], predictor: str, version: int, *,
                       since: dt.datetime | None = None,
                       until: dt.datetime | None = None) -> Counters: ...


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

    windowed = False

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def counters(self, deployment: dict[str, Any], predictor: str, version: int, *,
                       since: dt.datetime | None = None,
                       until: dt.datetime | None = None) -> Counters:
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


@dataclass(frozen=True)
class LabelScheme:
    """Which labels select one deployment's series. Seldon's executor exports
    ``deployment_name``, ``predictor_name``, ``predictor_version`` and ``service``;
    a namespace label exists only if the scrape adds one (empty: not filtered on)."""

    namespace: str = "namespace"
    deployment: str = "deployment_name"


def window_queries(scheme: LabelScheme, namespace: str, name: str, predictor: str,
                   version: int, range_ms: int) -> dict[str, str]:
    """The PromQL for one predictor version over the last ``range_ms`` (pure).

    ``increase()`` handles counter resets (a restarted pod); ``service="predictions"``
    leaves out feedback, health and metadata calls on the same histogram; the p99 is
    Prometheus' own ``histogram_quantile`` of the window's bucket increases."""
    sel = [f'{scheme.deployment}="{name}"', f'predictor_name="{predictor}"',
           f'predictor_version="v{version}"']
    if scheme.namespace:
        sel.insert(0, f'{scheme.namespace}="{namespace}"')
    served = ",".join([*sel, 'service="predictions"'])
    rng = f"[{max(1, int(range_ms))}ms]"
    return {
        "requests": f"sum by (code) (increase({SELDON_REQUESTS}_count{{{served}}}{rng}))",
        "p99": (f"histogram_quantile(0.99, sum by (le) "
                f"(increase({SELDON_REQUESTS}_bucket{{{served}}}{rng})))"),
        "classes": f"sum by (class) (increase({PREDICTIONS}{{{','.join(sel)}}}{rng}))",
    }


class PrometheusQuery:
    """Instant queries against Prometheus for Seldon Core's executor series.

    Windowed: each answer is what happened between ``since`` and ``until`` (the step's
    start and the analysis' clock), so the reconciler needs no counters baseline.
    """

    windowed = True

    def __init__(self, base_url: str, scheme: LabelScheme | None = None,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.scheme = scheme or LabelScheme()
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _query(self, session: aiohttp.ClientSession, promql: str,
                     at: dt.datetime) -> list[dict]:
        params = {"query": promql, "time": f"{at.timestamp():.3f}"}
        async with session.get(f"{self.base_url}/api/v1/query", params=params) as r:
            r.raise_for_status()
            body = await r.json()
        if body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body.get('error', body)}")
        return body["data"]["result"]

    async def counters(self, deployment: dict[str, Any], predictor: str, version: int, *,
                       since: dt.datetime | None = None,
                       until: dt.datetime | None = None) -> Counters:
        try:
            return await self._counters(deployment, predictor, version, since, until)
        except READ_ERRORS as exc:
            raise MetricsUnavailable(f"Prometheus at {self.base_url} cannot be queried: "
                                     f"{_said(exc)}") from exc

    async def _counters(self, deployment: dict[str, Any], predictor: str, version: int,
                        since: dt.datetime | None, until: dt.datetime | None) -> Counters:
        until = until or dt.datetime.now(dt.UTC)
        if since is None or since >= until:
            return Counters()  # an empty window
        meta = deployment["metadata"]
        range_ms = math.ceil((until - since).total_seconds() * 1000)
        q = window_queries(self.scheme, meta["namespace"], meta["name"], predictor, version,
                           range_ms)
        out = Counters()
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for row in await self._query(session, q["requests"], until):
                value = round(float(row["value"][1]))
                out.requests += value
                if row["metric"].get("code", "").startswith("5"):
                    out.errors += value
            for row in await self._query(session, q["p99"], until):
                seconds = float(row["value"][1])  # NaN: no request in the window
                out.p99_ms = None if math.isnan(seconds) else seconds * 1000.0
            for row in await self._query(session, q["classes"], until):
                out.classes[row["metric"].get("class", "?")] = round(float(row["value"][1]))
        return out


def _said(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__  # a timeout says nothing by itself
