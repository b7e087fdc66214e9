"""Conditions bookkeeping and metric windows (pure)."""

from __future__ import annotations

from controller import conditions
from controller.serving.metrics_source import (
    Counters,
    parse_router_metrics,
    quantile_ms,
    window,
)


def test_transition_time_moves_only_on_status_change() -> None:
    c1 = conditions.set_condition([], "Ready", True, "A", "m1", 1, now="2026-01-01T00:00:00Z")
    c2 = conditions.set_condition(c1, "Ready", True, "B", "m2", 2, now="2026-01-02T00:00:00Z")
    assert c2[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert c2[0]["observedGeneration"] == 2 and c2[0]["reason"] == "B"
    c3 = conditions.set_condition(c2, "Ready", False, "C", "m3", 2, now="2026-01-03T00:00:00Z")
    assert c3[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert [c["type"] for c in conditions.transitions(c2, c3)] == ["Ready"]
    assert conditions.transitions(c3, c3) == []


def test_status_patch_is_none_when_nothing_changed() -> None:
    old = {"phase": "Running", "metrics": {"a": 1}, "runs": [{"x": 1.0}]}
    assert conditions.status_patch(old, {"phase": "Running", "metrics": {"a": 1.0},
                                         "runs": [{"x": 1}]}) is None
    assert conditions.status_patch(old, {"phase": "Done", "metrics": {"a": 1}}) == {
        "phase": "Done", "runs": None}


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {"0.01": 50, "0.1": 90, "1": 100, "+Inf": 100}
    assert abs(quantile_ms(buckets, 0.5) - 10.0) < 1e-9
    assert abs(quantile_ms(buckets, 0.99) - 910.0) < 1e-6
    assert quantile_ms({"+Inf": 0}, 0.99) is None


def test_window_diffs_and_handles_resets() -> None:
    base = Counters(10, 1, {"0.1": 10, "+Inf": 10}, {"good": 10})
    now = Counters(30, 3, {"0.1": 28, "+Inf": 30}, {"good": 25, "bad": 5})
    w = window(now, base)
    assert (w.requests, w.errors, w.class_counts) == (20, 2, {"good": 15, "bad": 5})
    reset = window(Counters(4, 0, {"+Inf": 4}, {"good": 4}), base)
    assert reset.requests == 4


ROUTER = """# TYPE trellis_router_requests_total counter
trellis_router_requests_total{predictor="canary",version="2",code="200"} 40.0
trellis_router_requests_total{predictor="canary",version="2",code="500"} 2.0
trellis_router_requests_total{predictor="canary",version="2",code="400"} 3.0
trellis_router_requests_total{predictor="stable",version="1",code="200"} 400.0
# TYPE trellis_router_request_duration_seconds histogram
trellis_router_request_duration_seconds_bucket{predictor="canary",version="2",le="0.05"} 40.0
trellis_router_request_duration_seconds_bucket{predictor="canary",version="2",le="+Inf"} 45.0
trellis_router_request_duration_seconds_count{predictor="canary",version="2"} 45.0
trellis_router_request_duration_seconds_sum{predictor="canary",version="2"} 1.0
# TYPE trellis_router_predictions_total counter
trellis_router_predictions_total{predictor="canary",version="2",class="good"} 30.0
trellis_router_predictions_total{predictor="canary",version="2",class="bad"} 10.0
"""


def test_parse_router_metrics() -> None:
    c = parse_router_metrics(ROUTER, "canary", 2)
    assert (c.requests, c.errors) == (45, 2)
    assert c.buckets == {"0.05": 40.0, "+Inf": 45.0}
    assert c.classes == {"good": 30, "bad": 10}
    assert parse_router_metrics(ROUTER, "stable", 1).requests == 400
    assert parse_router_metrics(ROUTER, "canary", 3).requests == 0
