"""Which model version a ModelDeployment should serve, and how the rollout moves.

Pure functions over the ModelDeployment's spec and status and the Experiment's
registered models. The reconciler supplies the clock and, when a step's interval has
elapsed, the analysis of its window; it applies the resulting serving plan and writes
the returned status.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from controller import api
from controller.canary import Analysis, Policy, decide, seconds_since, steps_hash
from controller.conditions import now_iso
from controller.loop import Event

MAX_ROLLOUTS = 20
MAX_ANALYSES = 50


@dataclass(frozen=True)
class Model:
    version: int
    uri: str
    reference_uri: str | None = None

    @classmethod
    def from_status(cls, entry: dict[str, Any]) -> Model:
        return cls(int(entry["version"]), entry.get("artifactUri", ""),
                   entry.get("referenceUri"))


@dataclass(frozen=True)
class Target:
    model: Model | None
    reason: str  # why there is no target, when model is None
    message: str


def select_target(spec: dict[str, Any], models: list[dict[str, Any]],
                  rejected: list[dict[str, Any]], generation: int
                  ) -> Target:
    """The version to serve. ``latest`` skips rejected versions; an explicit version that
    was rejected is retried only when the spec names it again (a newer generation)."""
    registered = {int(m["version"]): Model.from_status(m) for m in models if "version" in m}
    wanted = (spec.get("model") or {}).get("version", "latest")
    rejected_at = {int(r["version"]): int(r.get("generation", 0)) for r in rejected}
    if not registered:
        return Target(None, api.Reason.MODEL_NOT_READY, "the experiment has no registered "
                      "model version yet")
    if wanted == "latest":
        usable = sorted(v for v in registered if v not in rejected_at)
        if not usable:
            return Target(None, api.Reason.VERSION_REJECTED, "every registered version was "
                          f"rejected ({', '.join(f'v{v}' for v in sorted(rejected_at))})")
        return Target(registered[usable[-1]], "", "")
    version = int(wanted)
    if version not in registered:
        known = ", ".join(f"v{v}" for v in sorted(registered))
        return Target(None, api.Reason.VERSION_NOT_FOUND,
                      f"model version {version} is not registered (registered: {known})")
    if version in rejected_at and rejected_at[version] >= generation:
        return Target(None, api.Reason.VERSION_REJECTED,
                      f"v{version} was rolled back; name it again in the spec to retry")
    return Target(registered[version], "", "")


@dataclass
class Plan:
    """The next status parts and what serving must look like."""

    stable: dict[str, Any] | None
    canary: dict[str, Any] | None
    rollouts: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    events: list[Event] = field(default_factory=list)
    # steady, deploy, start, wait, extend, advance, promote or rollback
    decision: str = "steady"
    needs_baseline: bool = False  # a step (re)started: capture counters for its window


def _version_entry(model: Model, now: str) -> dict[str, Any]:
    entry = {"version": model.version, "modelUri": model.uri, "since": now}
    if model.reference_uri:
        entry["referenceUri"] = model.reference_uri
    return entry


def _start_canary(model: Model, policy: Policy, now: str) -> dict[str, Any]:
    entry = {
        "version": model.version, "modelUri": model.uri, "step": 0,
        "weight": policy.steps[0], "stepsHash": steps_hash(policy.steps),
        "startedAt": now, "stepStartedAt": now, "analyses": [],
    }
    if model.reference_uri:
        entry["referenceUri"] = model.reference_uri
    return entry


def canary_due(canary: dict[str, Any] | None, policy: Policy, now: dt.datetime) -> bool:
    return bool(canary) and seconds_since(canary.get("stepStartedAt"), now) >= policy.interval_s


def plan(status: dict[str, Any], target: Target, policy: Policy, generation: int,
         analysis: Analysis | None, now: dt.datetime) -> Plan:
    """One step of the rollout state machine.

    ``analysis`` is the verdict on the current step's window when its interval has
    elapsed (see ``canary_due``), else None.
    """
    ts = now_iso(now)
    stable = copy.deepcopy(status.get("stable")) or None
    canary = copy.deepcopy(status.get("canary")) or None
    rollouts = copy.deepcopy(status.get("rollouts") or [])
    rejected = copy.deepcopy(status.get("rejectedVersions") or [])
    out = Plan(stable, canary, rollouts, rejected)
    model = target.model

    if stable is None and canary is None:
        if model is None:
            return out
        out.stable = _version_entry(model, ts)
        out.decision = "deploy"
        out.events.append(Event(api.Reason.DEPLOYING, f"deploying model v{model.version}"))
        return out

    if canary is not None and (model is None or model.version != canary["version"]):
        # The target moved on mid-rollout (a newer version, or the spec changed): the
        # unfinished canary is abandoned, not rejected.
        out.rollouts = _append_rollout(rollouts, canary, "superseded",
                                       "the target version changed during the rollout", ts)
        out.canary = canary = None
        out.events.append(Event(api.Reason.CANARY_ROLLED_BACK,
                                "canary superseded: the target version changed"))

    if canary is None:
        if model is None or (stable and model.version == stable["version"]):
            return out
        out.rejected = [r for r in rejected if int(r["version"]) != model.version]
        out.canary = _start_canary(model, policy, ts)
        out.decision = "start"
        out.needs_baseline = True
        out.events.append(Event(api.Reason.CANARY_STARTED,
                                f"canary v{model.version} started at {policy.steps[0]}% "
                                f"(stable v{stable['version'] if stable else '-'})"))
        return out

    if canary.get("stepsHash") != steps_hash(policy.steps):
        # An edited step list restarts the rollout deliberately (Argo Rollouts' rule).
        canary.update(step=0, weight=policy.steps[0], stepsHash=steps_hash(policy.steps),
                      stepStartedAt=ts)
        out.decision = "start"
        out.needs_baseline = True
        out.events.append(Event(api.Reason.CANARY_STARTED,
                                f"canary steps changed: v{canary['version']} restarts at "
                                f"{policy.steps[0]}%"))
        return out

    step = int(canary.get("step", 0))
    decision = decide(policy, step, analysis)
    out.decision = decision
    if analysis is not None:
        record = analysis.record(step, int(canary.get("weight", 0)), ts)
        canary["analyses"] = [*(canary.get("analyses") or [])[-(MAX_ANALYSES - 1):], record]
    if decision == "wait":
        return out
    if decision == "extend":
        canary["stepStartedAt"] = ts
        # needs_baseline stays False: the window keeps counting from the step's baseline
        return out
    if decision == "advance":
        canary.update(step=step + 1, weight=policy.steps[step + 1], stepStartedAt=ts)
        out.needs_baseline = True
        out.events.append(Event(api.Reason.CANARY_ADVANCED,
                                f"canary v{canary['version']} → {policy.steps[step + 1]}% "
                                f"({analysis.reason if analysis else ''})"))
        return out
    if decision == "promote":
        out.rollouts = _append_rollout(rollouts, canary, "promoted",
                                       analysis.reason if analysis else "", ts)
        out.stable = {k: canary[k] for k in ("version", "modelUri", "referenceUri")
                      if k in canary} | {"since": ts}
        out.canary = None
        out.events.append(Event(api.Reason.CANARY_PROMOTED,
                                f"v{canary['version']} promoted to stable"))
        return out
    # rollback
    reason = analysis.reason if analysis else "analysis failed"
    out.rollouts = _append_rollout(rollouts, canary, "rolledBack", reason, ts)
    out.rejected = [r for r in rejected if int(r["version"]) != canary["version"]] + [{
        "version": canary["version"], "reason": api.Reason.CANARY_ROLLED_BACK,
        "message": f"step {step + 1}/{len(policy.steps)} at {canary.get('weight')}%: {reason}",
        "at": ts, "generation": generation,
    }]
    out.canary = None
    out.events.append(Event(api.Reason.CANARY_ROLLED_BACK,
                            f"v{canary['version']} rolled back at {canary.get('weight')}%: "
                            f"{reason}", "Warning"))
    return out


def _append_rollout(rollouts: list[dict[str, Any]], canary: dict[str, Any], outcome: str,
                    reason: str, ts: str) -> list[dict[str, Any]]:
    entry = {"version": canary["version"], "outcome": outcome, "reason": reason,
             "startedAt": canary.get("startedAt", ts), "finishedAt": ts,
             "analyses": canary.get("analyses") or []}
    return [*rollouts, entry][-MAX_ROLLOUTS:]
