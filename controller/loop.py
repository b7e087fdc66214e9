"""The level-triggered reconcile loop every kind shares.

One kopf daemon per object runs this loop: read the latest object, ask the kind's
reconciler for the next status (a computation over spec and observed world), write
status once if — and only if — it changed, post Events for condition transitions,
then sleep until woken (a watch event, another object's change) or the requeue time.
A failed pass is status too: ``Ready=False`` (and ``Stalled=True`` when retrying cannot
help) with the reason and message ``controller.failures`` gives it, written when it
changes, retried with jittered backoff. Nothing lives only in memory: a restarted
operator picks up from ``status``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller import api, conditions, failures
from controller.kube import ApiException, Kube, Resource, api_message
from controller.logs import object_ref
from controller.metrics import Count, OperatorMetrics

log = logging.getLogger("trellis.loop")

WARNING_TYPES = {api.Cond.STALLED, api.Cond.DRIFT_DETECTED, api.Cond.ROLLED_BACK,
                 api.Cond.ACCURACY_DEGRADED}


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass
class Outcome:
    """What one reconcile decided: the whole next status, extra Events, when to look again,
    the counters that status change moves (applied once it is written) and, when a
    sub-step failed after others made progress, that step's error (the progress is
    written, with the failure on it)."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    counts: list[Count] = field(default_factory=list)
    error: Exception | None = None


class Reconciler(Protocol):
    resource: Resource

    async def reconcile(self, obj: dict[str, Any]) -> Outcome: ...

    async def cleanup(self, obj: dict[str, Any]) -> None: ...


class Wakeups:
    """asyncio.Events per object, so watch events and related objects wake a loop early.

    Kept per (kind, namespace): waking a namespace's objects of a kind (an Experiment
    changed: its namespace's ModelDeployments) costs what is there, not every object the
    operator knows — an Experiment event at a thousand objects was a scan of them all."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], dict[str, asyncio.Event]] = defaultdict(dict)

    def get(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        return self._events[(kind, namespace)].setdefault(name, asyncio.Event())

    def wake(self, kind: str, namespace: str, name: str) -> None:
        event = self._events.get((kind, namespace), {}).get(name)
        if event is not None:
            event.set()

    def wake_namespace(self, kind: str, namespace: str) -> None:
        for event in self._events.get((kind, namespace), {}).values():
            event.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        names = self._events.get((kind, namespace))
        if names is not None:
            names.pop(name, None)
            if not names:
                del self._events[(kind, namespace)]


def event_for(cond: conditions.Condition) -> Event:
    """Events on condition transitions: Warning when something is wrong."""
    bad = (cond["type"] == api.Cond.READY and cond["status"] == "False"
           and cond["reason"] not in (api.Reason.PROGRESSING, api.Reason.RUN_PENDING,
                                      api.Reason.RUN_RUNNING, api.Reason.DEPLOYING))
    bad |= cond["type"] in WARNING_TYPES and cond["status"] == "True"
    prefix = "" if cond["type"] == api.Cond.READY else f"{cond['type']}={cond['status']}: "
    return Event(cond["reason"], prefix + cond["message"], "Warning" if bad else "Normal")


@dataclass(frozen=True)
class Pass:
    """What one pass did: when to look again (None: at the resync; after a failure, what
    the progress made before it asks for), the object as our status write returned it
    (None: nothing written), and the failure, if it failed."""

    requeue_after: float | None
    written: dict[str, Any] | None
    failure: failures.Failure | None = None


async def reconcile_once(
    reconciler: Reconciler, kube: Kube, obj: dict[str, Any],
    metrics: OperatorMetrics | None = None, attempt: int = 1,
) -> Pass:
    """One pass: decide, write status if changed, post Events, count what was written.

    A failure — raised by the reconciler, handed back on ``Outcome.error`` after partial
    progress, or the API server refusing the status write — is classified
    (``controller.failures``) and written onto the object like any other status change:
    once per change of reason or message, with an Event when the condition transitions.
    A conflict (409) is an ordinary race and stays off status unless it repeats:
    ``attempt`` counts the failures in a row, this one included.
    """
    kind, gen = reconciler.resource.kind, obj["metadata"].get("generation")
    old = obj.get("status") or {}
    started = time.perf_counter()
    try:
        outcome = await reconciler.reconcile(obj)
    except Exception as exc:  # nothing decided: the failure goes on the last status
        outcome = Outcome(copy.deepcopy(dict(old)), error=exc)
    error = outcome.error
    if error is None:
        try:
            written, _ = await _write(reconciler, kube, obj,
                                      failures.recovered(outcome.status), outcome.events)
        except Exception as exc:  # the API server refused our status (or was not there)
            outcome, error = Outcome(copy.deepcopy(dict(old))), exc
        else:
            _record(metrics, kind, started, None)
            if metrics is not None:
                metrics.count(outcome.counts)
            return Pass(outcome.requeue_after, written)
    failure = failures.classify(error)
    _record(metrics, kind, started, failure)
    if failure.quiet and attempt < failures.QUIET_ATTEMPTS:
        log.debug("reconcile of %s %s: %s; retrying", kind, _name(obj), failure.message)
        return Pass(None, None, failure)
    written, changed = None, False
    try:
        written, changed = await _write(
            reconciler, kube, obj, failures.failed_status(outcome.status, failure, gen, old),
            outcome.events)
        if metrics is not None:  # what progress the pass made before failing is on status
            metrics.count(outcome.counts)
    except Exception as exc:  # the API server is down, say: the log is all there is
        log.warning("could not record the failure of %s %s on its status (%s)", kind,
                    _name(obj), _says(exc), extra=object_ref(obj))
    level = logging.WARNING if changed else logging.DEBUG
    unexpected = failure.reason == api.Reason.RECONCILE_FAILED and changed
    log.log(level, "reconcile of %s %s failed, %s %s: %s", kind, _name(obj), failure.kind,
            failure.reason, failure.message, extra=object_ref(obj),
            exc_info=error if unexpected else None)
    return Pass(outcome.requeue_after, written, failure)  # progress made keeps its pace


async def _write(reconciler: Reconciler, kube: Kube, obj: dict[str, Any],
                 status: dict[str, Any], explicit: list[Event]
                 ) -> tuple[dict[str, Any] | None, bool]:
    """Patch status to ``status`` if it differs, then post Events for the condition
    transitions and the reconciler's own; (the object written or None, whether it
    changed). Events follow the write: a transition that did not land is not announced."""
    meta = obj["metadata"]
    old = obj.get("status") or {}
    patch = conditions.status_patch(old, status)
    written = None
    if patch is not None:
        written = await kube.patch_status(reconciler.resource, meta["namespace"], meta["name"],
                                          patch)
        log.debug("status of %s/%s patched: %s", meta["namespace"], meta["name"], sorted(patch))
    said = {e.reason for e in explicit}  # said already, in the reconciler's words
    events = []
    for cond in conditions.transitions(old.get("conditions"), status.get("conditions")):
        if cond["reason"] not in said:  # Ready and Stalled of one failure: one Event
            said.add(cond["reason"])
            events.append(event_for(cond))
    for ev in [*events, *explicit]:
        try:
            await kube.event(obj, type_=ev.type, reason=ev.reason, message=ev.message)
        except Exception as exc:  # an Event is best effort; status already says it
            log.warning("could not post event %s: %s", ev.reason, _says(exc))
    return written, patch is not None


def _record(metrics: OperatorMetrics | None, kind: str, started: float,
            failure: failures.Failure | None) -> None:
    if metrics is None:
        return
    metrics.record_reconcile(kind, time.perf_counter() - started, failure is None)
    if failure is not None:
        metrics.record_error(kind, failure.reason)


def _says(exc: Exception) -> str:
    return api_message(exc) if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['metadata'].get('namespace')}/{obj['metadata'].get('name')}"


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain deep copy of kopf's live body (it changes under our feet otherwise), less
    ``metadata.managedFields``: nothing here reads them, and copying them was most of
    what an idle pass cost (a resync pass per object per minute, at thousands)."""
    obj = dict(body)
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        obj["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return copy.deepcopy(obj)


async def run_loop(
    reconciler: Reconciler,
    kube: Kube,
    body: Mapping[str, Any],
    stopped: Any,
    wakeup: asyncio.Event,
    *,
    resync: float,
    metrics: OperatorMetrics | None = None,
    first_retry: float = 1.0,
) -> None:
    """Reconcile ``body`` until the daemon is stopped.

    Failures are on the object (``reconcile_once``); here they only pace the next try:
    jittered exponential backoff for transient ones, about one resync for permanent
    ones (``failures.retry_delay``). A watch event — a spec edit, say — still wakes the
    loop at once.
    """
    failed = 0
    written: dict[str, Any] | None = None  # the object as our last status write returned it
    while not stopped:
        wakeup.clear()
        obj = snapshot(body)
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return
        obj, written = latest(obj, written)
        result = await reconcile_once(reconciler, kube, obj, metrics, failed + 1)
        written = result.written if result.written is not None else written
        if result.failure is None:
            failed = 0
            delay = result.requeue_after
        else:
            failed += 1
            delay = failures.retry_delay(result.failure, failed, resync=resync,
                                         first=first_retry)
            if result.requeue_after is not None:
                delay = min(delay, result.requeue_after)
        wait = resync if delay is None else min(delay, resync)
        # Asleep, a loop holds only what its next pass needs (``written``), not this
        # pass's copy of the object: thousands of loops sleep at once.
        del obj, result
        await _sleep(wakeup, stopped, wait)


def latest(obj: dict[str, Any], written: dict[str, Any] | None
           ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The object to reconcile (our last write while the watch has not delivered it yet)
    and the write still worth holding: none once the watch caught up, so that thousands
    of sleeping loops do not each keep a second full copy of their object."""
    if written is None:
        return obj, None
    if older(obj, written):
        return written, written
    return obj, None


def older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``obj`` predates ``than``. resourceVersions are opaque by contract, but
    kube-apiserver's etcd3 storage makes them monotonic revisions; when they are not
    numbers we trust the watch."""
    try:
        return int(obj["metadata"]["resourceVersion"]) < int(than["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False


async def _sleep(wakeup: asyncio.Event, stopped: Any, seconds: float) -> None:
    stop_task = asyncio.ensure_future(stopped.wait())
    wake_task = asyncio.ensure_future(wakeup.wait())
    try:
        await asyncio.wait({stop_task, wake_task}, timeout=max(seconds, 0.0),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop_task, wake_task):
            task.cancel()
