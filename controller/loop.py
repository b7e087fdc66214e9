"""The level-triggered reconcile loop every kind shares.

One kopf daemon per object runs this loop: read the latest object, ask the kind's
reconciler for the next status (a computation over spec and observed world), write
status once if — and only if — it changed, post Events for condition transitions,
then sleep until woken (a watch event, another object's change) or the requeue time.
Nothing lives only in memory: a restarted operator picks up from ``status``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller import api, conditions
from controller.kube import ApiException, Kube, Resource, api_message
from controller.logs import object_ref

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
    """What one reconcile decided: the whole next status, extra Events, when to look again."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


class Reconciler(Protocol):
    resource: Resource

    async def reconcile(self, obj: dict[str, Any]) -> Outcome: ...

    async def cleanup(self, obj: dict[str, Any]) -> None: ...


class Wakeups:
    """asyncio.Events per object, so watch events and related objects wake a loop early."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], asyncio.Event] = defaultdict(asyncio.Event)

    def get(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        return self._events[(kind, namespace, name)]

    def wake(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        if key in self._events:
            self._events[key].set()

    def wake_where(self, kind: str, predicate: Callable[[str, str], bool]) -> None:
        for (k, ns, name), ev in list(self._events.items()):
            if k == kind and predicate(ns, name):
                ev.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._events.pop((kind, namespace, name), None)


def event_for(cond: conditions.Condition) -> Event:
    """Events on condition transitions: Warning when something is wrong."""
    bad = (cond["type"] == api.Cond.READY and cond["status"] == "False"
           and cond["reason"] not in (api.Reason.PROGRESSING, api.Reason.RUN_PENDING,
                                      api.Reason.RUN_RUNNING, api.Reason.DEPLOYING))
    bad |= cond["type"] in WARNING_TYPES and cond["status"] == "True"
    prefix = "" if cond["type"] == api.Cond.READY else f"{cond['type']}={cond['status']}: "
    return Event(cond["reason"], prefix + cond["message"], "Warning" if bad else "Normal")


async def reconcile_once(
    reconciler: Reconciler, kube: Kube, obj: dict[str, Any],
    record: Callable[[str, float, bool], None] | None = None,
) -> tuple[float | None, dict[str, Any] | None]:
    """One pass: decide, write status if changed, post Events.

    Returns the requeue delay and, when status was written, the object as the API
    server returned it (so the next pass never decides from a stale copy).
    """
    meta = obj["metadata"]
    started = time.perf_counter()
    ok = False
    try:
        outcome = await reconciler.reconcile(obj)
        ok = True
    finally:
        if record is not None:
            record(reconciler.resource.kind, time.perf_counter() - started, ok)
    old_status = obj.get("status") or {}
    patch = conditions.status_patch(old_status, outcome.status)
    written = None
    if patch is not None:
        written = await kube.patch_status(reconciler.resource, meta["namespace"], meta["name"],
                                          patch)
        log.debug("status of %s/%s patched: %s", meta["namespace"], meta["name"], sorted(patch))
    explicit = {e.reason for e in outcome.events}  # said already, in the reconciler's words
    events = [event_for(c) for c in conditions.transitions(old_status.get("conditions"),
                                                           outcome.status.get("conditions"))
              if c["reason"] not in explicit]
    for ev in [*events, *outcome.events]:
        try:
            await kube.event(obj, type_=ev.type, reason=ev.reason, message=ev.message)
        except ApiException as exc:  # an Event is best effort; status already says it
            log.warning("could not post event %s: %s", ev.reason, exc.reason)
    return outcome.requeue_after, written


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain deep copy of kopf's live body (it changes under our feet otherwise)."""
    return copy.deepcopy(dict(body))


async def run_loop(
    reconciler: Reconciler,
    kube: Kube,
    body: Mapping[str, Any],
    stopped: Any,
    wakeup: asyncio.Event,
    *,
    resync: float,
    record: Callable[[str, float, bool], None] | None = None,
    backoff: tuple[float, float] = (1.0, 60.0),
) -> None:
    """Reconcile ``body`` until the daemon is stopped; transient errors back off."""
    failures = 0
    written: dict[str, Any] | None = None  # the object as our last status write returned it
    while not stopped:
        wakeup.clear()
        obj = snapshot(body)
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return
        if written is not None and _older(obj, written):
            obj = written  # the watch has not delivered our own write yet
        try:
            delay, after = await reconcile_once(reconciler, kube, obj, record)
            written = after if after is not None else written
            failures = 0
        except ApiException as exc:
            failures += 1
            delay = min(backoff[0] * 2 ** failures, backoff[1])
            if exc.status == 409:  # stale resourceVersion: the next event brings a fresh one
                delay = 0.2
            log.warning("reconcile of %s %s/%s failed (%s %s: %s); retrying in %.1fs",
                        reconciler.resource.kind, obj["metadata"].get("namespace"),
                        obj["metadata"].get("name"), exc.status, exc.reason,
                        api_message(exc), delay, extra=object_ref(obj))
        except Exception:
            failures += 1
            delay = min(backoff[0] * 2 ** failures, backoff[1])
            log.exception("reconcile of %s %s/%s crashed; retrying in %.1fs",
                          reconciler.resource.kind, obj["metadata"].get("namespace"),
                          obj["metadata"].get("name"), delay, extra=object_ref(obj))
        wait = resync if delay is None else min(delay, resync)
        await _sleep(wakeup, stopped, wait)


def _older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
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
