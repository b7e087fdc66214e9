"""Whether the drift log still records live traffic: the RequestLogging condition.

A full request log must not take serving down, so its writer keeps answering and drops
the records it cannot keep: the local router (which reports it on ``/metrics``:
``trellis_router_log_full``, ``trellis_router_log_dropped_total``) or, in cluster mode,
the active operator replica, which drains Seldon's request-logger events into the log
(``DriftFeed.drain``). That
silence would leave drift detection blind without anyone knowing; this condition makes
it visible on the ModelDeployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller import api, conditions


@dataclass(frozen=True)
class LogState:
    """A request log as its writer describes it (counters since the writer started)."""

    full: bool = False
    dropped_requests: int = 0
    dropped_feedback: int = 0
    used_bytes: int = 0
    max_bytes: int = 0
    writer: str = "router"


def logging_conditions(
    conds: list[dict[str, Any]] | None, state: LogState | None, generation: int
) -> list[dict[str, Any]]:
    """RequestLogging False (LogFull) while records are dropped, True once they fit again;
    unchanged when the writer's state could not be read (``state`` None)."""
    if state is None:
        return list(conds or [])
    if not state.full:
        return conditions.set_condition(
            conds, api.Cond.REQUEST_LOGGING, True, api.Reason.LOGGING,
            "live requests and feedback are logged for drift detection", generation)
    message = (
        f"request log full ({state.used_bytes} of {state.max_bytes} bytes, labelled requests "
        f"only): logging stopped, predictions are still served and drift checks use what was "
        f"logged; {state.dropped_requests} request(s) and {state.dropped_feedback} feedback "
        f"record(s) not logged since the {state.writer} started. Retrain on the labelled "
        "requests or raise spec.drift.storage.maxBytes"
    )
    return conditions.set_condition(conds, api.Cond.REQUEST_LOGGING, False,
                                    api.Reason.LOG_FULL, message, generation)
