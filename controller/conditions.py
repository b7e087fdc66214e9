"""Kubernetes-style status conditions, as pure functions over plain lists of dicts.

Conventions (Kubernetes API conventions, Flux's runtime/conditions): a condition's
``lastTransitionTime`` moves only when its ``status`` changes; ``observedGeneration``
says which spec the condition speaks about; abnormal-true conditions (Stalled,
DriftDetected, ...) exist only while they are true.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

Condition = dict[str, Any]
MAX_MESSAGE = 4000


def now_iso(now: dt.datetime | None = None) -> str:
    """RFC 3339 UTC timestamp with second precision (what the API server stores)."""
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def find(conditions: list[Condition] | None, type_: str) -> Condition | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """A new list with ``type_`` set; the transition time is kept unless status changed."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    result = [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type_]
    previous = find(conditions, type_)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status_str and previous.get("lastTransitionTime")
        else (now or now_iso())
    )
    new: Condition = {
        "type": type_,
        "status": status_str,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    result.append(new)
    return sorted(result, key=_order)


def remove_condition(conditions: list[Condition] | None, type_: str) -> list[Condition]:
    return [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type_]


def _order(cond: Condition) -> tuple[int, str]:
    # Ready first, then the rest alphabetically: stable output, no spurious diffs.
    return (0 if cond.get("type") == "Ready" else 1, cond.get("type", ""))


def transitions(old: list[Condition] | None, new: list[Condition] | None) -> list[Condition]:
    """Conditions in ``new`` whose status or reason differ from ``old`` (Event-worthy)."""
    changed = []
    for cond in new or []:
        before = find(old, cond["type"])
        if before is None or (before.get("status"), before.get("reason")) != (
            cond.get("status"),
            cond.get("reason"),
        ):
            changed.append(cond)
    return changed


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning ``old`` status into ``new``; None when nothing changed.

    Writing status only when it differs is what keeps the operator quiet in a steady
    state (zero writes when nothing changes).
    """
    old = dict(old or {})
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = status_patch(before, value)
            if sub is not None:
                patch[key] = sub
        elif _normalise(value) != _normalise(before):
            patch[key] = value
    for key in old:
        if key not in new and old[key] is not None:
            patch[key] = None
    return patch or None


def _normalise(value: Any) -> Any:
    # The API server stores 1.0 as 1; compare numbers by value, not by type.
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items() if v is not None}
    return value
