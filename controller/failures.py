"""Reconcile failures by intent: what the user reads, and when the loop tries again.

Every exception a reconcile pass raises is classified here, in one place, so that no
failure is only a log line: ``classify`` says whether retrying can help (transient:
``Ready=False``, retried with jittered exponential backoff) or not until something
outside the loop changes (permanent: ``Ready=False`` and ``Stalled=True``, retried
slowly — once per resync — because a spec edit, a RBAC fix or a relaxed admission policy
is not always something we can watch), and names it with a stable reason and the
error's own message. The loop (``controller.loop``) writes that onto the object only
when it differs from what is there, so a failure that persists costs no writes.

Adapters raise errors typed by intent (``MetricsUnavailable``, ``ModelUnreadable``,
``StorageUnavailable``) at their boundary instead of leaking aiohttp, boto3 or file-system
exceptions; they are kopf's ``TemporaryError`` / ``PermanentError``. The delete handlers
pace their retries by the same classification but never give up
(``controller.operator.on_delete``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3.exceptions

from controller import api, conditions
from controller.gitops.git_source import FetchError
from controller.kube import ApiException, api_message

CONFLICT_RETRY_S = 0.2
QUIET_ATTEMPTS = 3  # a conflict repeated this often is no race any more: it is reported


class MetricsUnavailable(kopf.TemporaryError):
    """The numbers a decision needs (canary analysis) cannot be read right now."""

    reason = api.Reason.METRICS_UNAVAILABLE


class ModelUnreadable(kopf.PermanentError):
    """A model's artifact or reference cannot be read: retrying the same URI will not
    help; a new model version (or a repaired file) will."""

    reason = api.Reason.MODEL_UNREADABLE


class StorageUnavailable(kopf.TemporaryError):
    """The object store (S3) cannot be reached or is throttling: the same read or write
    may work in a moment."""

    reason = api.Reason.STORAGE_UNAVAILABLE


class FeedbackExportFailed(kopf.PermanentError):
    """The labelled live inputs cannot be written where the retrain reads them (refused,
    no credentials, a bad destination): the retrain waits for that to be fixed."""

    reason = api.Reason.FEEDBACK_EXPORT_FAILED


@dataclass(frozen=True)
class Failure:
    """One classified failure: what goes on the object and how the loop paces retries."""

    permanent: bool  # retrying cannot help until something outside the loop changes
    reason: str
    message: str
    quiet: bool = False  # an ordinary race (409): retried at once, written only if it lasts

    @property
    def kind(self) -> str:
        return "permanent" if self.permanent else "transient"


# Reasons only the loop writes: a successful pass clears the Stalled they set.
LOOP_REASONS = frozenset({
    api.Reason.RECONCILE_FAILED, api.Reason.API_UNAVAILABLE, api.Reason.REJECTED,
    api.Reason.FORBIDDEN, api.Reason.UNAUTHORIZED, api.Reason.RESOURCE_NOT_FOUND,
    api.Reason.METRICS_UNAVAILABLE, api.Reason.MODEL_UNREADABLE,
    api.Reason.STORAGE_UNAVAILABLE, api.Reason.FEEDBACK_EXPORT_FAILED,
})


def classify(exc: BaseException) -> Failure:
    """The failure ``exc`` means to a user (pure: no I/O, no clock)."""
    if isinstance(exc, kopf.PermanentError | kopf.TemporaryError):
        reason = getattr(exc, "reason", None) or api.Reason.RECONCILE_FAILED
        return Failure(isinstance(exc, kopf.PermanentError), reason, _text(exc))
    if isinstance(exc, FetchError):  # as a SpecRepository's own fetch reports it
        return Failure(False, api.Reason.FETCH_FAILED, _text(exc))
    if isinstance(exc, ApiException):
        return _api_failure(exc)
    if isinstance(exc, urllib3.exceptions.HTTPError):  # the client never got an answer
        return Failure(False, api.Reason.API_UNAVAILABLE,
                       f"cannot reach the Kubernetes API server: {_text(exc)}")
    return Failure(False, api.Reason.RECONCILE_FAILED, f"{type(exc).__name__}: {_text(exc)}")


def _api_failure(exc: ApiException) -> Failure:
    status = int(exc.status or 0)
    where = getattr(exc, "request", None)  # "PATCH /apis/...", added by controller.kube
    message = f"{api_message(exc)} ({status}{' on ' + where if where else ''})"
    if status == 409:  # someone wrote first: re-read and decide again
        return Failure(False, api.Reason.CONFLICT, message, quiet=True)
    if status == 403:
        return Failure(True, api.Reason.FORBIDDEN, message)
    if status == 401:
        return Failure(True, api.Reason.UNAUTHORIZED, message)
    if status == 404:  # e.g. a CRD (SeldonDeployment) not installed, a namespace gone
        return Failure(False, api.Reason.RESOURCE_NOT_FOUND, message)
    if status in (0, 408, 410, 429) or status >= 500:
        return Failure(False, api.Reason.API_UNAVAILABLE, message)
    return Failure(True, api.Reason.REJECTED, message)  # 400, 422 (invalid, denied), 413...


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__  # TimeoutError() says nothing by itself


def retry_delay(failure: Failure, attempt: int, *, resync: float, first: float = 1.0,
                rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after ``attempt`` failures in a row.

    Transient: exponential from ``first`` (from 0.2 s for a conflict) up to ``resync``;
    permanent: about one resync.
    Equal jitter (half fixed, half random) everywhere, so the loops of many objects
    failing on one outage do not retry in lockstep.
    """
    ceiling = max(resync, first)
    start = CONFLICT_RETRY_S if failure.quiet else first
    base = ceiling if failure.permanent else min(start * 2 ** max(attempt - 1, 0), ceiling)
    return base / 2 + base / 2 * rng()


def failed_status(status: Mapping[str, Any], failure: Failure, generation: int | None,
                  stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``status`` with ``failure`` on it: ``Ready=False`` with its reason and message, and
    ``Stalled=True`` when permanent. Everything else stays as the pass left it (the
    canary's step, the synced commit, the run in flight).

    ``stored`` is the status on the server: transition times count from it, not from
    the ``Ready=True`` a half-successful pass computed before the failure overrode it.
    """
    out = copy.deepcopy(dict(status))
    conds = conditions.set_condition(out.get("conditions"), api.Cond.READY, False,
                                     failure.reason, failure.message, generation)
    if failure.permanent:
        conds = conditions.set_condition(conds, api.Cond.STALLED, True, failure.reason,
                                         failure.message, generation)
    else:
        conds = _without_own_stalled(conds)
    before = (stored or {}).get("conditions")
    for cond in conds:
        if cond["type"] in (api.Cond.READY, api.Cond.STALLED):
            was = conditions.find(before, cond["type"])
            if was and was.get("status") == cond["status"] and was.get("lastTransitionTime"):
                cond["lastTransitionTime"] = was["lastTransitionTime"]
    out["conditions"] = conds
    return out


def recovered(status: dict[str, Any]) -> dict[str, Any]:
    """After a successful pass: a Stalled the loop set for an earlier failure goes (the
    reconcilers compute Ready every pass; Stalled they set and clear only for their own
    reasons)."""
    conds = status.get("conditions")
    stalled = conditions.find(conds, api.Cond.STALLED)
    if stalled is None or stalled.get("reason") not in LOOP_REASONS:
        return status
    return {**status, "conditions": _without_own_stalled(conds)}


def left_by_loop(status: Mapping[str, Any] | None) -> bool:
    """Whether the last word on ``status`` is a failure the loop wrote (Ready's reason)."""
    ready = conditions.find((status or {}).get("conditions"), api.Cond.READY)
    return ready is not None and ready.get("reason") in LOOP_REASONS


def _without_own_stalled(conds: list[conditions.Condition] | None
                         ) -> list[conditions.Condition]:
    stalled = conditions.find(conds, api.Cond.STALLED)
    if stalled is not None and stalled.get("reason") in LOOP_REASONS:
        return conditions.remove_condition(conds, api.Cond.STALLED)
    return list(conds or [])
