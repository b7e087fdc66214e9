"""What an Experiment should do next, as pure functions over its spec and status.

A *run key* is (generation, trigger): every generation of the spec deserves one
successful run (trigger ""), and every drift episode that asked for retraining one
more (trigger = the episode id). Attempts of one key are retried per ``spec.retry``
with exponential backoff; a key is never launched twice at once, which is what makes
"never two runs for one generation" hold across operator restarts.
"""

from __future__ import annotations

import datetime as dt
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
