"""What an Experiment should do next, as pure functions over its spec and status.

A *run key* is (generation, trigger): every generation of the spec deserves one
successful run (trigger ""), and every drift episode that asked for retraining one
more (trigger = the episode id). Attempts of one key are retried per ``spec.retry``
with exponential backoff; a key is never launched twice at once, which is what makes
"never two runs for one generation" hold across operator restarts.

Drift episodes reach an Experiment as requests on the status of the ModelDeployments
that serve it (``status.drift.retrain``); ``adopt_retrain`` picks the one to act on and
the Experiment records it on its own ``status.retrain``, in the same write as the run
it launches for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller import api
from controller.conditions import parse_time

SUCCEEDED, FAILED, RUNNING = api.Phase.SUCCEEDED, api.Phase.FAILED, api.Phase.RUNNING
MAX_RUNS = 50


@dataclass(frozen=True)
class RunKey:
    generation: int
    trigger: str = ""
    # The flow code's revision (a digest the SpecRepository sync stamps on the object):
    # a code-only change is a new run for the spec, though the generation stays.
    revision: str = ""

    def label(self) -> str:
        return f"generation {self.generation}" + (f" (retrain {self.trigger})"
                                                  if self.trigger else "")


@dataclass(frozen=True)
class Launch:
    key: RunKey
    attempt: int


@dataclass(frozen=True)
class Observe:
    current: dict[str, Any]


@dataclass(frozen=True)
class Backoff:
    key: RunKey
    attempt: int
    seconds: float


@dataclass(frozen=True)
class Idle:
    """Nothing to run: every needed key succeeded, or retries are exhausted."""

    exhausted: RunKey | None = None


Action = Launch | Observe | Backoff | Idle


def runs_of(runs: list[dict[str, Any]], key: RunKey) -> list[dict[str, Any]]:
    return [r for r in runs if int(r.get("generation", 0)) == key.generation
            and (r.get("trigger") or "") == key.trigger
            and (key.trigger or (r.get("flowRevision") or "") == key.revision)]


def needed_keys(generation: int, status: dict[str, Any], revision: str = "") -> list[RunKey]:
    """The spec's own run first, then a pending retrain (one per drift episode, ever)."""
    keys = [RunKey(generation, "", revision)]
    episode = ((status.get("retrain") or {}).get("episode") or "")
    runs = status.get("runs") or []
    if episode and not any((r.get("trigger") or "") == episode and
                           int(r.get("generation", 0)) != generation for r in runs):
        keys.append(RunKey(generation, episode, revision))
    return keys


def adopt_retrain(status: dict[str, Any], requests: Iterable[tuple[str, dict[str, Any]]],
                  *, experiment: str, cooldown_s: float,
                  created: dt.datetime | None = None) -> dict[str, Any] | None:
    """The next ``status.retrain``, adopted from one of ``requests`` ((deployment, its
    ``status.drift.retrain``)), or None: nothing to adopt.

    Only while no run is in progress (the run in flight keeps the retrain it was launched
    for). A request is pending when it names this Experiment (or nothing), is newer than
    the last one adopted (older ones were made before that retrain, or were passed over)
    by at least ``cooldown_s``, was made after the Experiment was ``created`` (not for a
    deleted namesake), and its episode is neither the last adopted nor run already. Of
    several, the earliest goes first; the next waits for that run and the cooldown.
    """
    if status.get("currentRun"):
        return None
    last = status.get("retrain") or {}
    last_at = parse_time(last.get("requestedAt"))
    triggers = {r.get("trigger") for r in status.get("runs") or []}
    pending = []
    for deployment, request in requests:
        episode, at = request.get("episode"), parse_time(request.get("requestedAt"))
        if not episode or at is None or request.get("experiment") not in (None, experiment):
            continue
        if episode == last.get("episode") or episode in triggers:
            continue
        if last_at is not None and (at - last_at).total_seconds() < max(cooldown_s, 1e-6):
            continue
        if created is not None and at < created:
            continue
        pending.append((at, deployment, request))
    if not pending:
        return None
    _, deployment, request = min(pending, key=lambda p: (p[0], p[1]))
    adopted = {k: v for k, v in request.items() if k != "experiment"}
    return {**adopted, "deployment": deployment}


def next_action(spec: dict[str, Any], status: dict[str, Any], generation: int,
                now: dt.datetime, revision: str = "") -> Action:
    current = status.get("currentRun")
    if current:
        return Observe(current)
    retry = spec.get("retry") or {}
    limit = int(retry.get("limit", 1))
    backoff = float(retry.get("backoffSeconds", 10))
    runs = status.get("runs") or []
    exhausted = None
    for key in needed_keys(generation, status, revision):
        attempts = runs_of(runs, key)
        if not attempts:
            return Launch(key, 1)
        last = attempts[-1]
        if last.get("phase") == SUCCEEDED:
            continue
        if len(attempts) > limit:
            exhausted = key
            continue
        finished = parse_time(last.get("finishedAt")) or now
        wait = backoff * (2 ** (len(attempts) - 1)) - (now - finished).total_seconds()
        if wait > 0:
            return Backoff(key, len(attempts) + 1, wait)
        return Launch(key, len(attempts) + 1)
    return Idle(exhausted)


def objective_met(objective: dict[str, Any], metrics: dict[str, float]) -> tuple[bool, str]:
    """Whether a run's metrics meet the objective, and the sentence that says so."""
    name = objective["metric"]
    if name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        return False, f"the run reported no metric {name!r} (reported: {known})"
    value, threshold = float(metrics[name]), float(objective["threshold"])
    if objective.get("goal", "maximize") == "maximize":
        ok, op = value >= threshold, (">=" if value >= threshold else "<")
    else:
        ok, op = value <= threshold, ("<=" if value <= threshold else ">")
    return ok, f"{name}={value:.4f} {op} {threshold:g}"


def next_version(models: list[dict[str, Any]]) -> int:
    return max((int(m["version"]) for m in models), default=0) + 1


def phase_of(status: dict[str, Any], generation: int) -> str:
    if status.get("currentRun"):
        return RUNNING
    runs = status.get("runs") or []
    mine = [r for r in runs if int(r.get("generation", 0)) == generation]
    if not mine:
        return api.Phase.PENDING
    return SUCCEEDED if mine[-1].get("phase") == SUCCEEDED else FAILED


def trim_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return runs[-MAX_RUNS:]
