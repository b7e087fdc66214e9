"""The router's Prometheus metrics (names fixed by docs/contracts.md).

Per-predictor series are what canary analysis compares, so requests the router refuses
before choosing a predictor (auth, oversize, malformed) are counted apart in
``trellis_router_rejected_total`` and never blamed on a predictor. A full request log
refuses nothing: the records it cannot take are counted in
``trellis_router_log_dropped_total`` and ``trellis_router_log_full`` is 1 while it lasts
(the operator turns that into the RequestLogging condition).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trellis_router_requests",
            "Prediction requests forwarded to a predictor, by the HTTP code it produced.",
            ["predictor", "version", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "trellis_router_request_duration_seconds",
            "Time from choosing a predictor to its answer (or failure).",
            ["predictor", "version"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "trellis_router_predictions",
            "Predicted classes, one per input row.",
            ["predictor", "version", "class"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "trellis_router_rejected",
            "Requests the router answered itself without a predictor's result.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "trellis_router_feedback",
            "Labelled rows received through feedback, by whether the prediction was right.",
            ["version", "outcome"],
            registry=self.registry,
        )
        self.feedback_without_truth = Counter(
            "trellis_router_feedback_without_truth",
            "Feedback with no ground truth (a reward only): answered, nothing logged.",
            registry=self.registry,
        )
        self.config_errors = Counter(
            "trellis_router_config_errors",
            "Config reloads refused because the file was invalid (the old config stays).",
            registry=self.registry,
        )
        self.log_bytes = Gauge(
            "trellis_router_log_bytes",
            "Bytes the request log counts against its bound.",
            registry=self.registry,
        )
        self.log_max_bytes = Gauge(
            "trellis_router_log_max_bytes", "The request log's byte bound.", registry=self.registry
        )
        self.log_dropped = Counter(
            "trellis_router_log_dropped",
            "Records the full request log did not take (the request was still answered).",
            ["kind"],
            registry=self.registry,
        )
        self.log_full = Gauge(
            "trellis_router_log_full",
            "1 while the request log drops records for want of room, else 0.",
            registry=self.registry,
        )

    def observe(self, predictor: str, version: int, code: int, seconds: float) -> None:
        self.requests.labels(predictor, str(version), str(code)).inc()
        self.duration.labels(predictor, str(version)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
