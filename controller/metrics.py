"""Operator metrics in Prometheus format (served by the operator's metrics endpoint).

A private registry per process, so tests that start several operators in one
interpreter do not collide and the endpoint shows only Trellis' own series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


@dataclass(frozen=True)
class Count:
    """One increment of a counter that describes a status change (a run finished, a canary
    step decided). Reconcilers return these instead of counting, and the loop applies
    them once that status is on the server: a failed write is retried, and the retry
    decides the same change again, which must not count twice."""

    metric: str  # the counter's attribute on OperatorMetrics
    labels: tuple[str, ...] = ()


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "trellis_reconciles_total", "Reconcile passes per kind and result",
            ["kind", "result"], registry=self.registry)
        self.reconcile_seconds = Histogram(
            "trellis_reconcile_duration_seconds", "Duration of one reconcile pass",
            ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.runs = Counter(
            "trellis_training_runs_total", "Training runs by outcome (started, succeeded, "
            "failed, objective_not_met)", ["outcome"], registry=self.registry)
        self.models = Counter(
            "trellis_model_versions_registered_total", "Model versions registered",
            registry=self.registry)
        self.canary = Counter(
            "trellis_canary_decisions_total", "Canary analysis decisions (advance, promote, "
            "rollback)", ["decision"], registry=self.registry)
        self.drift = Counter(
            "trellis_drift_detections_total", "Drift episodes detected", registry=self.registry)
        self.retrains = Counter(
            "trellis_retrains_total", "Retraining runs requested by drift or accuracy",
            registry=self.registry)
        self.syncs = Counter(
            "trellis_spec_syncs_total", "SpecRepository sync results (synced, fetch_failed, "
            "invalid, apply_failed)", ["result"], registry=self.registry)
        self.errors = Counter(
            "trellis_reconcile_errors_total", "Failed reconcile passes per kind and reason "
            "(the reason on the object's Ready condition)", ["kind", "reason"],
            registry=self.registry)
        self.api_requests = Counter(
            "trellis_api_requests_total", "Requests the operator's reconcilers sent to the "
            "API server, by verb and resource (kopf's own — watches, finalizers — aside)",
            ["verb", "resource"], registry=self.registry)
        self.log_dropped = Counter(
            "trellis_request_log_dropped_total", "Records of Seldon's request logger that "
            "did not reach the drift log, by kind: request, feedback (a full log did not take "
            "them; acknowledged all the same), unpaired (a half whose other half never came), "
            "unmatched (feedback for no logged prediction), unstored (the shared store "
            "refused the write: answered 503, nothing acknowledged)",
            ["namespace", "deployment", "kind"], registry=self.registry)

    def count(self, counts: Iterable[Count]) -> None:
        for c in counts:
            counter = getattr(self, c.metric)
            (counter.labels(*c.labels) if c.labels else counter).inc()

    def record_request(self, verb: str, resource: str) -> None:
        self.api_requests.labels(verb, resource).inc()

    def record_log_drop(self, namespace: str, deployment: str, kind: str) -> None:
        self.log_dropped.labels(namespace, deployment, kind).inc()

    def record_error(self, kind: str, reason: str) -> None:
        self.errors.labels(kind, reason).inc()

    def record_reconcile(self, kind: str, seconds: float, ok: bool) -> None:
        self.reconciles.labels(kind, "success" if ok else "error").inc()
        self.reconcile_seconds.labels(kind).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
