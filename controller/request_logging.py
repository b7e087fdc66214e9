"""Whether the drift log still records live traffic: the RequestLogging condition.

A full request log must not take serving down, so the router keeps answering and drops
the records it cannot keep. That silence would leave drift detection blind without
anyone knowing; this condition, decided from what the router reports on ``/metrics``
(``trellis_router_log_full``, ``trellis_router_log_dropped_total``), makes it visible
on the ModelDeployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller import api, conditions


@dataclass(frozen=True)
class LogState:
    """The router's request log as its metrics describe it (counters since it started)."""

    full: bool = False
    dropped_requests: int = 0
    dropped_feedback: int = 0
    used_bytes: int = 0
    max_bytes: int = 0


def logging_conditions(
    conds: list[dict[str, Any]] | None, state: LogState | None, generation: int
) -> list[dict[str, Any]]:
    """RequestLogging False (LogFull) while records are dropped, True once they fit again;
    unchanged when the router's metrics could not be read (``state`` None)."""
    if state is None:
        return list(conds or [])
    if not state.full:
        return conditions.set_condition(
            conds, api.Cond.REQUEST_LOGGING, True, api.Reason.LOGGING,
            "live requests and feedback are logged for drift detection", generation)
    message = (
        f"request log full ({state.used_bytes} of {state.max_bytes} bytes, labelled requests "
        f"only): logging stopped, predictions are still served; {state.dropped_requests} "
        f"request(s) and {state.dropped_feedback} feedback record(s) not logged since the "
        "router started. Retrain on the labelled requests or raise spec.drift.storage.maxBytes"
    )
    return conditions.set_condition(conds, api.Cond.REQUEST_LOGGING, False,
                                    api.Reason.LOG_FULL, message, generation)
