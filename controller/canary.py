"""Canary rollout decisions, as pure functions (the Argo Rollouts shape).

Steps are data (``spec.canary.steps``); status keeps the current step index and a hash
of the step list, so an edited list restarts the rollout deliberately. The analysis
verdict is a function of the policy and two metric windows (canary, stable); the
rollout decision is a function of status, spec, verdict and the clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.api import MODEL_DEPLOYMENT
from controller.conditions import parse_time
from controller.schema import spec_section

Verdict = Literal["pass", "fail", "inconclusive"]
Decision = Literal["wait", "advance", "promote", "rollback", "extend"]

_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration like ``30s``, ``1m30s``, ``250ms``."""
    parts = _DURATION.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    return sum(int(n) * _UNIT[u] for n, u in parts)


def steps_hash(steps: list[int]) -> str:
    return hashlib.sha256(json.dumps(steps).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Policy:
    steps: list[int]
    interval_s: float
    min_requests: int
    max_error_rate: float
    max_latency_p99_ms: float
    max_prediction_shift: float

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Policy:
        canary = spec_section(MODEL_DEPLOYMENT.kind, "canary", spec.get("canary"))
        analysis = canary["analysis"]
        return cls(
            steps=list(canary["steps"]),
            interval_s=parse_duration(canary["interval"]),
            min_requests=int(analysis["minRequests"]),
            max_error_rate=float(analysis["maxErrorRate"]),
            max_latency_p99_ms=float(analysis["maxLatencyP99Ms"]),
            max_prediction_shift=float(analysis["maxPredictionShift"]),
        )


@dataclass(frozen=True)
class Window:
    """What one predictor did during an analysis window."""

    requests: int
    errors: int  # server-side failures (5xx, timeouts); client 4xx are not the model's fault
    latency_p99_ms: float | None
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    reason: str
    requests: int
    error_rate: float
    latency_p99_ms: float | None
    prediction_shift: float | None

    def record(self, step: int, weight: int, at: str) -> dict[str, Any]:
        """The entry kept on ``status.canary.analyses`` (JSON-safe, rounded)."""
        out: dict[str, Any] = {
            "step": step, "weight": weight, "verdict": self.verdict, "reason": self.reason,
            "requests": self.requests, "errorRate": round(self.error_rate, 4), "at": at,
        }
        if self.latency_p99_ms is not None:
            out["latencyP99Ms"] = round(self.latency_p99_ms, 2)
        if self.prediction_shift is not None:
            out["predictionShift"] = round(self.prediction_shift, 4)
        return out


def total_variation(a: dict[str, int], b: dict[str, int]) -> float | None:
    """Half the L1 distance between two class distributions; None when either is empty."""
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        return None
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in keys)


def analyse(policy: Policy, canary: Window, stable: Window | None) -> Analysis:
    """The verdict on one canary window. Failing checks win over missing traffic: a
    canary that already errs on few requests is rolled back, not given more traffic."""
    shift = None
    if stable is not None and stable.requests >= policy.min_requests:
        shift = total_variation(canary.class_counts, stable.class_counts)
    base = {"requests": canary.requests, "error_rate": canary.error_rate,
            "latency_p99_ms": canary.latency_p99_ms, "prediction_shift": shift}
    if canary.requests and canary.error_rate > policy.max_error_rate and (
            canary.errors >= 3 or canary.requests >= policy.min_requests):
        return Analysis("fail", f"error rate {canary.error_rate:.3f} > "
                        f"{policy.max_error_rate:g} ({canary.errors}/{canary.requests} "
                        "requests failed)", **base)
    if canary.requests < policy.min_requests:
        return Analysis("inconclusive", f"waiting for traffic: {canary.requests}/"
                        f"{policy.min_requests} requests", **base)
    if canary.latency_p99_ms is not None and canary.latency_p99_ms > policy.max_latency_p99_ms:
        return Analysis("fail", f"p99 latency {canary.latency_p99_ms:.0f}ms > "
                        f"{policy.max_latency_p99_ms:g}ms", **base)
    if shift is not None and shift > policy.max_prediction_shift:
        return Analysis("fail", f"predicted-class distribution shifted by {shift:.2f} "
                        f"(total variation) > {policy.max_prediction_shift:g} vs stable", **base)
    detail = f"{canary.requests} requests, error rate {canary.error_rate:.3f}"
    if canary.latency_p99_ms is not None:
        detail += f", p99 {canary.latency_p99_ms:.0f}ms"
    if shift is not None:
        detail += f", class shift {shift:.2f}"
    return Analysis("pass", detail, **base)


def serving_failed(message: str) -> Analysis:
    """The verdict on a canary whose serving system gave up (Seldon state Failed): it
    fails its step whatever its metrics say, so the rollout returns to stable."""
    return Analysis("fail", message, 0, 0.0, None, None)


def seconds_since(iso: str | None, now: dt.datetime) -> float:
    then = parse_time(iso)
    return float("inf") if then is None else (now - then).total_seconds()


def decide(policy: Policy, step: int, analysis: Analysis | None) -> Decision:
    """What to do with a canary at ``step`` (index into the steps) after ``analysis``.

    ``None`` means the interval has not elapsed yet: wait.
    """
    if analysis is None:
        return "wait"
    if analysis.verdict == "fail":
        return "rollback"
    if analysis.verdict == "inconclusive":
        return "extend"
    return "promote" if step >= len(policy.steps) - 1 else "advance"


def weights(stable_version: int | None, canary_version: int | None,
            canary_weight: int) -> dict[str, int]:
    """Traffic per predictor; the two always sum to 100 while both exist."""
    if canary_version is None or stable_version is None:
        return {"stable": 100} if stable_version is not None else (
            {"canary": 100} if canary_version is not None else {})
    canary_weight = max(0, min(100, canary_weight))
    return {"stable": 100 - canary_weight, "canary": canary_weight}
