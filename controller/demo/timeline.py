"""The demo's recording read into the series the report draws and tabulates.

``make demo`` records the custom resources' statuses every couple of seconds; a report
needs them the other way round: one series per version, per feature, per rollout. This
module does that reshaping once, tolerating a story that stopped early or lacks whole
parts (no drift, no rollouts, no samples), so the plots and the HTML never guess at keys.
All times are seconds since the demo started.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Doc = Mapping[str, Any]
Rel = Callable[[Any], float | None]  # a recorded timestamp → seconds since the start
OUTCOME_WORDS = {"promoted": "promoted", "rolledBack": "rolled back", "superseded": "superseded"}


@dataclass(frozen=True)
class Run:
    pathspec: str
    version: int | None
    reason: str
    trigger: str
    commit: str
    started: float | None
    finished: float | None
    accuracy: float | None
    epochs: list[dict[str, float]]
    message: str = ""


@dataclass(frozen=True)
class Traffic:
    t: float
    stable: int | None
    canary: int | None
    weight: int


@dataclass(frozen=True)
class Analysis:
    version: int
    t: float
    step: int
    weight: int
    verdict: str
    reason: str
    requests: int | None
    error_rate: float | None
    p99_ms: float | None
    shift: float | None


@dataclass(frozen=True)
class Rollout:
    version: int
    outcome: str
    reason: str
    started: float | None
    finished: float | None
    analyses: int


@dataclass(frozen=True)
class DriftCheck:
    t: float
    values: dict[str, float]
    detected: bool
    live_accuracy: float | None
    reference: int | None


@dataclass(frozen=True)
class Marker:
    t: float
    kind: str  # detected | retrain | cleared | promoted | rolledBack | superseded
    label: str


@dataclass(frozen=True)
class Part:
    """One part of the story (operator, training, serving...): whether it ran, and how
    or why not."""

    name: str
    ran: bool
    how: str


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    ok: bool


@dataclass
class Story:
    title: str
    t0: float
    duration: float
    phases: list[Phase] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    objective_metric: str = "accuracy"
    objective_threshold: float | None = None
    traffic: list[Traffic] = field(default_factory=list)
    analyses: list[Analysis] = field(default_factory=list)
    rollouts: list[Rollout] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    drift: list[DriftCheck] = field(default_factory=list)
    drift_test: str = "ks"
    drift_threshold: float = 0.05
    min_accuracy: float | None = None
    markers: list[Marker] = field(default_factory=list)
    stable_now: int | None = None
    canary_now: tuple[int, int] | None = None
    rejected: dict[int, str] = field(default_factory=dict)
    repo: dict[str, str] = field(default_factory=dict)
    kubectl: str = ""
    mode: str = "local"  # local | cluster: where the operator, training and serving ran
    parts: list[Part] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)  # cluster mode's facts


def epoch_of(value: Any) -> float | None:
    """Epoch seconds of a float or an RFC 3339 string (the API server's format)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def clock(seconds: float | None) -> str:
    """``+m:ss`` since the start: the one time format of the whole report."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, round(seconds))
    return f"+{s // 60}:{s % 60:02d}"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def version_of(value: Any) -> int | None:
    """``3``, ``"3"`` or ``"v3"`` → 3; anything else → None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("v").isdigit():
        return int(value.lstrip("v"))
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _doc(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def read_story(data: Doc) -> Story:
    """Everything the report shows, from the demo driver's recording."""
    samples = sorted((s for s in _dicts(data.get("samples")) if _num(s.get("t")) is not None),
                     key=lambda s: s["t"])
    exp, dep = _doc(data.get("experiment")), _doc(data.get("deployment"))
    events = [e for e in _dicts(data.get("events")) if _num(e.get("t")) is not None]
    known = [s["t"] for s in samples] + [e["t"] for e in events]
    t0 = _num(data.get("started_at")) or (min(known) if known else 0.0)
    t1 = _num(data.get("finished_at")) or (max(known) if known else t0)

    def rel(value: Any) -> float | None:
        at = epoch_of(value)
        return None if at is None else at - t0

    story = Story(title=str(data.get("title") or "Trellis demo"), t0=t0,
                  duration=max(0.0, t1 - t0), kubectl=str(data.get("kubectl_get_mlops") or ""))
    story.mode = str(data.get("mode") or "local")
    story.parts = [Part(str(p.get("part") or "?"), bool(p.get("ran")), str(p.get("how") or ""))
                   for p in _dicts(data.get("parts"))]
    story.cluster = _doc(data.get("cluster"))
    story.phases = [Phase(str(p.get("name") or "phase"), _num(p.get("seconds")) or 0.0,
                          bool(p.get("ok"))) for p in _dicts(data.get("phases"))]
    exp_statuses = [_doc(s.get("experiment")) for s in samples] + [_doc(exp.get("status"))]
    dep_statuses = [_doc(s.get("deployment")) for s in samples]
    final_dep = _doc(dep.get("status")) or (dep_statuses[-1] if dep_statuses else {})
    _read_training(story, exp, exp_statuses, rel)
    _read_canary(story, dep, samples, final_dep, rel)
    detections = _read_drift(story, dep, samples, rel)
    _read_markers(story, events, exp_statuses, detections, rel)
    repo = _doc(data.get("specrepo"))
    spec, status = _doc(repo.get("spec")), _doc(repo.get("status"))
    story.repo = {k: str(v) for k, v in {
        "name": _doc(repo.get("metadata")).get("name"), "url": spec.get("url"),
        "ref": " ".join(f"{k} {v}" for k, v in spec["ref"].items()) if isinstance(
            spec.get("ref"), dict) else spec.get("ref"), "path": spec.get("path"),
        "commit": status.get("lastSyncedCommit")}.items() if v}
    return story


def _read_training(story: Story, exp: Doc, statuses: list[dict[str, Any]], rel: Rel) -> None:
    objective = _doc(_doc(exp.get("spec")).get("objective"))
    story.objective_metric = str(objective.get("metric") or "accuracy")
    story.objective_threshold = _num(objective.get("threshold"))
    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for status in statuses:  # runs may be trimmed from the final status: keep every one seen
        for run in _dicts(status.get("runs")):
            if run.get("pathspec"):
                runs[str(run["pathspec"])] = run
        for model in _dicts(status.get("models")):
            if model.get("run"):
                models[str(model["run"])] = model
    for pathspec, run in runs.items():
        model = models.get(pathspec, {})
        metrics = {**_doc(run.get("metrics")), **_doc(model.get("metrics"))}
        acc = _num(metrics.get(story.objective_metric))
        epochs = [e for e in _dicts(run.get("epochs")) if _num(e.get("epoch")) is not None]
        if acc is None and epochs and run.get("phase") == "Succeeded":
            acc = _num(epochs[-1].get("val_accuracy"))
        story.runs.append(Run(
            pathspec=pathspec, version=version_of(model.get("version")),
            reason=str(run.get("reason") or run.get("phase") or ""),
            trigger=str(model.get("trigger") or run.get("trigger") or ""),
            commit=str(model.get("commit") or run.get("commit") or ""),
            started=rel(run.get("startedAt")), finished=rel(run.get("finishedAt")),
            accuracy=acc, epochs=epochs, message=str(run.get("message") or "")))
    story.runs.sort(key=lambda r: (r.started is None, r.started or 0.0, r.pathspec))


def _read_canary(story: Story, dep: Doc, samples: list[dict[str, Any]],
                 final: dict[str, Any], rel: Rel) -> None:
    analysis = _doc(_doc(_doc(dep.get("spec")).get("canary")).get("analysis"))
    story.limits = {k: v for k, v in (("errorRate", _num(analysis.get("maxErrorRate"))),
                                      ("p99", _num(analysis.get("maxLatencyP99Ms"))))
                    if v is not None}
    seen: dict[tuple[int, str, int], Analysis] = {}

    def take(version: int | None, records: Any) -> None:
        for a in _dicts(records):
            at = rel(a.get("at"))
            if version is None or at is None:
                continue
            seen[(version, str(a.get("at")), int(_num(a.get("step")) or 0))] = Analysis(
                version, at, int(_num(a.get("step")) or 0), int(_num(a.get("weight")) or 0),
                str(a.get("verdict") or "inconclusive"), str(a.get("reason") or ""),
                None if _num(a.get("requests")) is None else int(a["requests"]),
                _num(a.get("errorRate")), _num(a.get("latencyP99Ms")),
                _num(a.get("predictionShift")))

    rollouts: dict[tuple[int, str], dict[str, Any]] = {}
    for sample in samples:
        status = _doc(sample.get("deployment"))
        canary = _doc(status.get("canary"))
        stable_v = version_of(status.get("stableVersion")) or version_of(
            _doc(status.get("stable")).get("version"))
        canary_v = version_of(status.get("canaryVersion")) or version_of(canary.get("version"))
        weight = int(_num(canary.get("weight")) or 0) if canary_v else 0
        story.traffic.append(Traffic(float(sample["t"]) - story.t0, stable_v, canary_v, weight))
        take(canary_v, canary.get("analyses"))
        for ro in _dicts(status.get("rollouts")):
            rollouts[(version_of(ro.get("version")) or 0, str(ro.get("startedAt")))] = ro
    for ro in _dicts(final.get("rollouts")):
        rollouts[(version_of(ro.get("version")) or 0, str(ro.get("startedAt")))] = ro
    canary = _doc(final.get("canary"))
    take(version_of(canary.get("version")), canary.get("analyses"))
    for (version, _), ro in rollouts.items():
        take(version, ro.get("analyses"))
        story.rollouts.append(Rollout(version, str(ro.get("outcome") or "?"),
                                      str(ro.get("reason") or ""), rel(ro.get("startedAt")),
                                      rel(ro.get("finishedAt")), len(_dicts(ro.get("analyses")))))
    story.rollouts.sort(key=lambda r: (r.started is None, r.started or 0.0))
    story.analyses = sorted(seen.values(), key=lambda a: a.t)
    story.stable_now = version_of(final.get("stableVersion")) or version_of(
        _doc(final.get("stable")).get("version"))
    canary_v = version_of(final.get("canaryVersion")) or version_of(canary.get("version"))
    story.canary_now = (canary_v, int(_num(canary.get("weight")) or 0)) if canary_v else None
    for r in _dicts(final.get("rejectedVersions")):
        if (v := version_of(r.get("version"))) is not None:
            story.rejected[v] = str(r.get("message") or r.get("reason") or "rejected")


def _read_drift(story: Story, dep: Doc, samples: list[dict[str, Any]], rel: Rel
                ) -> list[float]:
    """Fills the drift series; returns the episodes' ``detectedAt`` moments."""
    detections: set[float] = set()
    policy = _doc(_doc(dep.get("spec")).get("drift"))
    story.min_accuracy = _num(policy.get("minAccuracy"))
    by_check: dict[str, DriftCheck] = {}
    for sample in samples:
        drift = _doc(_doc(sample.get("deployment")).get("drift"))
        if (at := rel(drift.get("detectedAt"))) is not None:
            detections.add(at)
        feats = _dicts(drift.get("features"))
        if not feats:
            continue
        story.drift_test = str(drift.get("test") or story.drift_test)
        key = "psi" if story.drift_test == "psi" else "pValue"
        when = rel(drift.get("checkedAt"))
        values = {str(f.get("name")): v for f in feats if (v := _num(f.get(key))) is not None}
        by_check[str(drift.get("checkedAt") or sample["t"])] = DriftCheck(
            float(sample["t"]) - story.t0 if when is None else when, values,
            bool(drift.get("detected")), _num(drift.get("liveAccuracy")),
            version_of(drift.get("referenceVersion")))
    story.drift = sorted(by_check.values(), key=lambda c: c.t)
    if story.drift_test == "psi":
        story.drift_threshold = _num(policy.get("psiThreshold")) or 0.2
    else:
        features = max((len(c.values) for c in story.drift), default=1) or 1
        story.drift_threshold = (_num(policy.get("pValue")) or 0.05) / features
    return sorted(detections)


def _read_markers(story: Story, events: list[dict[str, Any]], exp_statuses: list[dict[str, Any]],
                  detections: list[float], rel: Rel) -> None:
    found: list[Marker] = []
    labels = {"DriftDetected": ("detected", "drift detected"),
              "RetrainRequested": ("retrain", "retrain requested"),
              "DriftCleared": ("cleared", "drift cleared")}
    for e in events:
        if (kind := labels.get(str(e.get("reason")))) is not None:
            found.append(Marker(float(e["t"]) - story.t0, *kind))
    for status in exp_statuses:
        if (at := rel(_doc(status.get("retrain")).get("requestedAt"))) is not None:
            found.append(Marker(at, *labels["RetrainRequested"]))
    found += [Marker(t, *labels["DriftDetected"]) for t in detections]
    for ro in story.rollouts:
        if ro.finished is not None:
            word = OUTCOME_WORDS.get(ro.outcome, ro.outcome)
            found.append(Marker(ro.finished, ro.outcome, f"v{ro.version} {word}"))
    story.markers = _dedupe(found)


def _dedupe(markers: list[Marker], within: float = 15.0) -> list[Marker]:
    """One marker per transition: its Event and its status field both report it, the
    Event as the driver saw it, possibly a sample or two later."""
    out: list[Marker] = []
    for m in sorted(markers, key=lambda m: (m.t, m.kind)):
        if not any(o.kind == m.kind and o.label == m.label and abs(o.t - m.t) <= within
                   for o in out):
            out.append(m)
    return out
