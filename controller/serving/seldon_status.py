"""What a SeldonDeployment's status says about the spec Trellis wrote (pure).

Seldon Core 1.17.1's v1 status has no ``observedGeneration``: right after Trellis writes
a new spec, ``state: Available`` may still describe the old one. Seldon writes its status
with ``Status().Update`` on the object it read when its reconcile began, so a write based
on an object older than ours fails with a conflict: once the SeldonDeployment's
``resourceVersion`` differs from the one our write returned, the status (whatever its
state) was computed from our spec or a later one. ``pending_write`` remembers our write
on the ModelDeployment's status (a restarted operator keeps waiting); ``assess`` reads
state and conditions only once the status has caught up.

Traffic-only writes change no pods (Seldon leaves the Deployments alone, and may not
write its status at all), so they start no wait; a write during a wait moves it on.
Seldon also skips its status write when its verdict is unchanged (``updateStatus``
compares old and new), so a wait is bounded: after ``STATUS_WAIT_S`` from the first
write, the status is taken as it stands.

Seldon sets ``Failed`` for any reconcile error (``updateStatusForError``) and retries:
only the Deployment's progress deadline ("no longer progressing") is final; any other
Failed is shown, still pending, with Seldon's words.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from controller.conditions import now_iso, parse_time

PREDICTIONS_PATH = "/api/v1.0/predictions"
STATUS_WAIT_S = 30.0  # Seldon writes Creating within a reconcile; none comes if unchanged
FINAL_FAILURE = "no longer progressing"  # the Deployment's progress deadline passed

Health = Literal["available", "pending", "failed"]


@dataclass(frozen=True)
class Assessment:
    health: Health
    message: str


def endpoint(sdep: dict[str, Any], gateway_url: str) -> str | None:
    """The URL users call for predictions.

    With an ingress gateway configured, its Seldon route, where the traffic split lives
    (``/seldon/<ns>/<name>/api/v1.0/predictions``). Without one, Seldon's own
    ``status.address.url`` as is: it already ends in the predictions path and is the first
    predictor's Service, so it bypasses the split. None until either is known."""
    meta = sdep.get("metadata") or {}
    if gateway_url:
        return (f"{gateway_url.rstrip('/')}/seldon/{meta['namespace']}/{meta['name']}"
                f"{PREDICTIONS_PATH}")
    return ((sdep.get("status") or {}).get("address") or {}).get("url") or None


def _pods(predictor: dict[str, Any]) -> dict[str, Any]:
    """A predictor's spec minus what Seldon routes without touching its Deployments."""
    return {k: v for k, v in predictor.items() if k not in ("traffic", "replicas")}


def pods_change(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether writing ``desired`` adds a predictor or changes one's pods."""
    have = {p.get("name"): _pods(p)
            for p in ((current or {}).get("spec") or {}).get("predictors") or []}
    return any(have.get(p["name"]) != _pods(p) for p in desired["spec"]["predictors"])


def pending_write(previous: dict[str, Any] | None, pods_changed: bool,
                  written: dict[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """The write to wait for after writing ``written`` (None: nothing to wait for).

    ``previous`` is a wait still open: our own write moves it on, keeping its start."""
    if not (pods_changed or previous):
        return None
    since = (previous or {}).get("since") or now_iso(now)
    return {"resourceVersion": written["metadata"]["resourceVersion"], "since": since}


def caught_up(sdep: dict[str, Any], pending: dict[str, Any] | None, now: dt.datetime) -> bool:
    """Whether the SeldonDeployment was written since our pending write (by Seldon: our
    own writes move ``pending`` on), or the wait ran out. A cached copy older than our
    write is not; where resourceVersions are not numbers (opaque by contract), any other
    one counts."""
    if not pending:
        return True
    since = parse_time(pending.get("since"))
    if since is None or (now - since).total_seconds() >= STATUS_WAIT_S:
        return True
    have, ours = (sdep.get("metadata") or {}).get("resourceVersion"), pending["resourceVersion"]
    if have == ours:
        return False
    try:
        return int(have) > int(ours)
    except (TypeError, ValueError):
        return True


def assess(sdep: dict[str, Any], pending: dict[str, Any] | None,
           now: dt.datetime) -> Assessment:
    """Available, still pending, or failed (with Seldon's description)."""
    if not caught_up(sdep, pending, now):
        return Assessment("pending", "waiting for Seldon Core to take the new spec "
                                     "(its status still describes the previous one)")
    status = sdep.get("status") or {}
    state = status.get("state")
    description = (status.get("description") or "").strip()
    if state == "Failed" and FINAL_FAILURE in description.lower():
        return Assessment("failed", f"Seldon Core reports the SeldonDeployment Failed: "
                                    f"{description}")
    if state == "Failed":
        return Assessment("pending", "Seldon Core reports an error and retries"
                                     + (f": {description}" if description else ""))
    if state == "Available":
        return Assessment("available", "SeldonDeployment Available")
    return Assessment("pending", f"waiting for Seldon Core: state {state or 'not reported yet'}"
                                 + (f": {description}" if description else ""))
