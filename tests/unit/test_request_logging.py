"""The RequestLogging condition, decided from the router's request-log metrics."""

from __future__ import annotations

from controller import conditions
from controller.request_logging import LogState, logging_conditions
from controller.serving.metrics_source import parse_log_state

METRICS = """\
# TYPE trellis_router_log_bytes gauge
trellis_router_log_bytes 699000.0
# TYPE trellis_router_log_max_bytes gauge
trellis_router_log_max_bytes 700000.0
# TYPE trellis_router_log_dropped_total counter
trellis_router_log_dropped_total{kind="request"} 7.0
trellis_router_log_dropped_total{kind="feedback"} 2.0
# TYPE trellis_router_log_full gauge
trellis_router_log_full 1.0
"""


def test_parse_log_state() -> None:
    assert parse_log_state(METRICS) == LogState(True, 7, 2, 699000, 700000)
    assert parse_log_state("") == LogState()


def test_full_log_is_false_logfull_and_recovers() -> None:
    ready = conditions.set_condition(None, "Ready", True, "Serving", "ok", 1)
    full = logging_conditions(ready, LogState(True, 7, 2, 699000, 700000), 1)
    cond = conditions.find(full, "RequestLogging")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "LogFull")
    assert "7 request(s) and 2 feedback" in cond["message"]
    assert "predictions are still served" in cond["message"]
    assert conditions.find(full, "Ready") == conditions.find(ready, "Ready")

    assert logging_conditions(full, None, 2) == full  # metrics unreadable: nothing decided
    back = logging_conditions(full, LogState(False, 7, 2, 1000, 700000), 2)
    cond = conditions.find(back, "RequestLogging")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Logging")
    assert cond["observedGeneration"] == 2


def test_the_message_names_the_writer_and_what_drift_checks_use() -> None:
    state = LogState(True, 3, 0, 1048000, 1048576, writer="active operator replica")
    cond = conditions.find(logging_conditions(None, state, 1), "RequestLogging")
    assert cond is not None and "since the active operator replica started" in cond["message"]
    assert "drift checks use what was logged" in cond["message"]
