"""Drift episodes: what the operator does with each window's verdict.

Pure decision over (previous ``status.drift``, this check's observations) -> (next
``status.drift``, Events, an optional retrain request, desired conditions). The request
goes onto the deployment's own status (``status.drift.retrain``), in the same write as
the episode that asked for it: the Experiment reconciler adopts it from there and writes
its own ``status.retrain``. Everything needed to resume lives in those two statuses, so a
restarted operator neither forgets an episode nor asks for a second retrain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from numpy.typing import ArrayLike

from controller.api import MODEL_DEPLOYMENT, Cond, Reason
from controller.canary import parse_duration
from controller.conditions import now_iso, parse_time
from controller.drift import Correction, DriftResult, Reference, Test, ks_test, psi_test
from controller.schema import spec_section


@dataclass(frozen=True)
class DriftPolicy:
    """A ModelDeployment's ``spec.drift``, with the CRD's defaults."""

    test: Test = "ks"
    window: int = 500
    min_samples: int = 100
    p_value: float = 0.05
    psi_threshold: float = 0.2
    correction: Correction = "bonferroni"
    action: Literal["alert", "retrain"] = "alert"
    cooldown_s: float = 600.0
    min_accuracy: float | None = None
    min_labelled: int = 100  # labels needed before live accuracy counts as evidence

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | None, objective_threshold: float | None = None
    ) -> DriftPolicy:
        """``objective_threshold``: the Experiment's accuracy objective, the CRD's default
        for ``minAccuracy``. ``minSamples`` also gates how many labels make accuracy count."""
        s = spec_section(MODEL_DEPLOYMENT.kind, "drift", spec)
        min_samples = int(s["minSamples"])
        min_acc = s.get("minAccuracy", objective_threshold)
        return cls(
            test=s["test"],
            window=int(s["window"]),
            min_samples=min_samples,
            p_value=float(s["pValue"]),
            psi_threshold=float(s["psiThreshold"]),
            action=s["action"],
            cooldown_s=parse_duration(str(s["cooldown"])),
            min_accuracy=None if min_acc is None else float(min_acc),
            min_labelled=min_samples,
        )

    def evaluate(self, reference: Reference, window: ArrayLike) -> DriftResult:
        if self.test == "psi":
            return psi_test(reference, window, self.psi_threshold)
        return ks_test(reference, window, self.p_value, self.correction)


@dataclass(frozen=True)
class LastRetrain:
    """A retrain request as a status records it: the Experiment's ``status.retrain`` (the
    one it adopted) or the deployment's ``status.drift.retrain`` (the last it made). The
    later of the two starts the cooldown clock."""

    episode: str
    requested_at: datetime

    @classmethod
    def from_status(cls, retrain: Mapping[str, Any] | None) -> LastRetrain | None:
        if not retrain or not retrain.get("episode") or not retrain.get("requestedAt"):
            return None
        return cls(str(retrain["episode"]), _required_time(retrain["requestedAt"]))


@dataclass(frozen=True)
class RetrainRequest:
    episode: str
    reason: str
    requested_at: datetime
    window: int
    p_values: dict[str, float]
    experiment: str | None = None  # the Experiment asked to retrain

    def to_status(self) -> dict[str, Any]:
        """The deployment's ``status.drift.retrain`` (the caller adds ``feedbackUri``)."""
        status = {
            "episode": self.episode,
            "requestedAt": now_iso(self.requested_at),
            "reason": self.reason,
            "window": self.window,
            "pValues": dict(self.p_values),
        }
        if self.experiment:
            status["experiment"] = self.experiment
        return status


@dataclass(frozen=True)
class DriftEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DriftDecision:
    status: dict[str, Any]  # the complete next status.drift (keys are never removed)
    events: tuple[DriftEvent, ...]  # only on transitions
    retrain: RetrainRequest | None  # new this check (also in status["retrain"])
    conditions: dict[str, tuple[str, str] | None]  # type -> (reason, message); None: absent


def next_drift_state(
    previous: Mapping[str, Any] | None,
    result: DriftResult | None,
    *,
    policy: DriftPolicy,
    now: datetime,
    deployment: str,
    reference_version: int,
    samples: int,
    last_retrain: LastRetrain | None,
    live_accuracy: float | None = None,
    labelled: int = 0,
    labels_wanted: int = 0,
    labels_since_onset: int = 0,
    experiment: str | None = None,
) -> DriftDecision:
    """The next ``status.drift`` from the last one and this check's observations.

    An episode starts when the trigger (drift, or live accuracy under the minimum with at
    least ``min_labelled`` labels) turns true, keeps its id (``<deployment>-v<ref>-<UTC
    start>``) while it holds, and ends when it clears or the reference changes. With no
    verdict at all (``result`` None for want of samples, accuracy unknown) nothing moves.
    A retrain is requested at most once per episode (``retrainRequested``) and never within
    ``cooldown_s`` of the last request: the later of this deployment's own (``retrain`` in
    ``previous``) and ``last_retrain``, the Experiment's ``status.retrain`` (read, never
    written here: another deployment of the same Experiment may have asked). The request
    is part of the returned status, so one write records the episode, the flag and the
    request together: a lost write loses all three, and the Experiment, which adopts
    requests only from this status, never saw it. A retrain also waits until
    ``labels_wanted`` labelled inputs arrived since the onset (``labels_since_onset``):
    training on the new world needs examples of it.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    prev = dict(previous or {})
    same_ref = prev.get("referenceVersion") == reference_version
    was_active = bool(prev.get("detected")) and same_ref
    events: list[DriftEvent] = []
    if prev.get("detected") and not same_ref:
        events.append(
            DriftEvent(
                "Normal",
                Reason.DRIFT_CLEARED,
                f"episode {prev.get('episode')}"
                f" closed: reference is now version {reference_version}",
            )
        )
    min_acc = policy.min_accuracy
    acc_known = (
        live_accuracy is not None and min_acc is not None and labelled >= policy.min_labelled
    )
    acc_low = bool(acc_known and live_accuracy < min_acc)  # type: ignore[operator]
    drifted = result is not None and result.detected
    active = (drifted or acc_low) if (result is not None or acc_known) else was_active
    acc_text = f"accuracy {live_accuracy:.2f}<{min_acc:.2f}" if acc_low else ""
    why = "; ".join(t for t in (result.headline() if drifted else "", acc_text) if t)

    episode, detected_at = prev.get("episode"), prev.get("detectedAt")
    requested = bool(prev.get("retrainRequested"))  # per episode; an ended one keeps its own
    if active and not was_active:
        episode, detected_at, requested = (
            f"{deployment}-v{reference_version}-{now.astimezone(UTC):%Y%m%d-%H%M%S}",
            now_iso(now),
            False,
        )
        events.append(
            DriftEvent(
                "Warning",
                Reason.DRIFT_DETECTED,
                f"{_evidence(result, why)}; episode {episode} started",
            )
        )
    elif was_active and not active:
        events.append(DriftEvent("Normal", Reason.DRIFT_CLEARED, f"episode {episode} ended"))

    retrain, deferred = None, ""
    if active and policy.action == "retrain" and not requested:
        clock = _latest(last_retrain, LastRetrain.from_status(prev.get("retrain")))
        ready = clock.requested_at + timedelta(seconds=policy.cooldown_s) if clock else now
        if labels_since_onset < labels_wanted:
            deferred = (f"; retrain waits for labelled inputs ({labels_since_onset}/"
                        f"{labels_wanted} since the onset)")
        elif now >= ready:
            feats = result.to_status()["features"] if result else prev.get("features", [])
            retrain = RetrainRequest(
                str(episode),
                Reason.DRIFT_DETECTED
                if drifted or not acc_low
                else Reason.ACCURACY_BELOW_OBJECTIVE,
                now,
                result.window if result else int(prev.get("window", 0)),
                {f["name"]: f["pValue"] for f in feats},
                experiment,
            )
            requested = True
            events.append(
                DriftEvent("Normal", Reason.RETRAIN_REQUESTED, f"retraining for episode {episode}")
            )
        else:
            deferred = f"; retrain waits for cooldown until {now_iso(ready)}"

    if why:
        summary = why
    elif result is None and not acc_known:
        summary = (
            (prev.get("summary") or "drift")
            if was_active
            else f"waiting {samples}/{policy.min_samples}"
        )
    else:
        summary = "none"
    status: dict[str, Any] = {
        "summary": summary,
        "detected": active,
        "test": result.test if result else prev.get("test", policy.test),
        "window": result.window if result else int(prev.get("window", 0)) if same_ref else 0,
        "samples": int(samples),
        "referenceVersion": reference_version,
        "checkedAt": now_iso(now),
        "retrainRequested": requested,
        "labelledSamples": int(labelled),
        "features": (
            result.to_status()["features"]
            if result
            else list(prev.get("features", []))
            if same_ref
            else []
        ),
    }
    if episode:
        status.update(episode=episode, detectedAt=detected_at)
    if retrain is not None:
        status["retrain"] = retrain.to_status()
    elif prev.get("retrain"):
        status["retrain"] = dict(prev["retrain"])  # the last request: the cooldown clock
    if live_accuracy is not None:
        status["liveAccuracy"] = round(float(live_accuracy), 4)
    elif "liveAccuracy" in prev:
        status["liveAccuracy"] = prev["liveAccuracy"]

    conditions: dict[str, tuple[str, str] | None] = {Cond.DRIFT_DETECTED: None}
    if active:
        reason = (
            Reason.ACCURACY_BELOW_OBJECTIVE if acc_low and not drifted else Reason.DRIFT_DETECTED
        )
        conditions[Cond.DRIFT_DETECTED] = (
            reason,
            f"{summary}; episode {episode}{'; retrain requested' if requested else ''}{deferred}",
        )
    if acc_known:
        conditions[Cond.ACCURACY_DEGRADED] = (
            (Reason.ACCURACY_BELOW_OBJECTIVE, f"{acc_text} over {labelled} labelled inputs")
            if acc_low
            else None
        )
    return DriftDecision(status, tuple(events), retrain, conditions)


def _latest(*retrains: LastRetrain | None) -> LastRetrain | None:
    known = [r for r in retrains if r is not None]
    return max(known, key=lambda r: r.requested_at) if known else None


def _evidence(result: DriftResult | None, why: str) -> str:
    if result is None or not result.detected:
        return why
    return (
        f"{why} (threshold {result.threshold:.3g}, {result.test}/{result.correction} "
        f"over {len(result.features)} features, window {result.window})"
    )


def _required_time(value: str) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError("empty timestamp")
    return parsed
