"""The drift episode state machine: one retrain per episode, cooldown, clears, restarts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api import Cond, Reason
from controller.drift import DriftResult, FeatureDrift
from controller.drift_episodes import (
    DriftPolicy,
    LastRetrain,
    next_drift_state,
    parse_duration,
)
from controller.training.decide import adopt_retrain

CRDS = Path(__file__).resolve().parents[2] / "crds"

T0 = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
RETRAIN = DriftPolicy(action="retrain", cooldown_s=600, min_accuracy=0.9, min_labelled=100)


def _verdict(detected: bool | None, p: float = 1e-5) -> DriftResult | None:
    if detected is None:
        return None
    feats = (
        FeatureDrift("hue", p if detected else 0.4, 0.31, 0.4),
        FeatureDrift("size", 0.7, 0.02, 0.01),
    )
    return DriftResult(detected, "ks", 0.025, feats, 500)


def _run(policy: DriftPolicy, steps: list[dict[str, Any]]) -> list[Any]:
    """Feed each decision's status (and retrain, as the Experiment would) into the next."""
    status: Mapping[str, Any] | None = None
    experiment: dict[str, Any] | None = None
    decisions = []
    for step in steps:
        decision = next_drift_state(
            status,
            _verdict(step.get("drift")),
            policy=policy,
            now=T0 + timedelta(minutes=step["t"]),
            deployment="pumpkins",
            reference_version=step.get("ref", 3),
            samples=step.get("samples", 500),
            last_retrain=LastRetrain.from_status(experiment),
            live_accuracy=step.get("acc"),
            labelled=step.get("labelled", 0),
        )
        if decision.retrain is not None:
            experiment = decision.retrain.to_status()
        status = decision.status
        decisions.append(decision)
    return decisions


@pytest.mark.parametrize(
    ("policy", "steps", "expect"),
    [
        (  # one retrain per episode; the cooldown spans episodes; clearing ends the episode
            RETRAIN,
            [
                {"t": 0, "drift": False},
                {"t": 1, "drift": True},
                {"t": 2, "drift": True},
                {"t": 3, "drift": False},
                {"t": 6, "drift": True},
                {"t": 9, "drift": True},
                {"t": 12, "drift": True},
                {"t": 13, "drift": True},
            ],
            [
                (False, [], False, "none"),
                (
                    True,
                    [Reason.DRIFT_DETECTED, Reason.RETRAIN_REQUESTED],
                    True,
                    "drift hue p=1e-05",
                ),
                (True, [], False, "drift hue p=1e-05"),
                (False, [Reason.DRIFT_CLEARED], False, "none"),
                (True, [Reason.DRIFT_DETECTED], False, "drift hue p=1e-05"),
                (True, [], False, "drift hue p=1e-05"),
                (True, [Reason.RETRAIN_REQUESTED], True, "drift hue p=1e-05"),
                (True, [], False, "drift hue p=1e-05"),
            ],
        ),
        (  # alert only: events, never a retrain
            DriftPolicy(action="alert"),
            [{"t": 0, "drift": True}, {"t": 30, "drift": True}, {"t": 31, "drift": False}],
            [
                (True, [Reason.DRIFT_DETECTED], False, "drift hue p=1e-05"),
                (True, [], False, "drift hue p=1e-05"),
                (False, [Reason.DRIFT_CLEARED], False, "none"),
            ],
        ),
        (  # accuracy is a trigger once enough labels back it; too few labels is no evidence
            RETRAIN,
            [
                {"t": 0, "drift": False, "acc": 0.5, "labelled": 99},
                {"t": 1, "drift": False, "acc": 0.71, "labelled": 150},
                {"t": 2, "drift": False, "acc": 0.95, "labelled": 160},
            ],
            [
                (False, [], False, "none"),
                (
                    True,
                    [Reason.DRIFT_DETECTED, Reason.RETRAIN_REQUESTED],
                    True,
                    "accuracy 0.71<0.90",
                ),
                (False, [Reason.DRIFT_CLEARED], False, "none"),
            ],
        ),
        (  # too few samples: waiting, and an open episode is held, not ended
            RETRAIN,
            [
                {"t": 0, "drift": None, "samples": 37},
                {"t": 1, "drift": True},
                {"t": 2, "drift": None, "samples": 20},
                {"t": 3, "drift": False},
            ],
            [
                (False, [], False, "waiting 37/100"),
                (
                    True,
                    [Reason.DRIFT_DETECTED, Reason.RETRAIN_REQUESTED],
                    True,
                    "drift hue p=1e-05",
                ),
                (True, [], False, "drift hue p=1e-05"),
                (False, [Reason.DRIFT_CLEARED], False, "none"),
            ],
        ),
        (  # a new reference closes the episode; a new one may retrain once the cooldown allows
            RETRAIN,
            [
                {"t": 0, "drift": True},
                {"t": 5, "drift": True, "ref": 4},
                {"t": 11, "drift": True, "ref": 4},
                {"t": 12, "drift": False, "ref": 5},
            ],
            [
                (
                    True,
                    [Reason.DRIFT_DETECTED, Reason.RETRAIN_REQUESTED],
                    True,
                    "drift hue p=1e-05",
                ),
                (True, [Reason.DRIFT_CLEARED, Reason.DRIFT_DETECTED], False, "drift hue p=1e-05"),
                (True, [Reason.RETRAIN_REQUESTED], True, "drift hue p=1e-05"),
                (False, [Reason.DRIFT_CLEARED], False, "none"),
            ],
        ),
    ],
    ids=[
        "retrain-once-cooldown",
        "alert-only",
        "accuracy",
        "insufficient-samples",
        "new-reference",
    ],
)
def test_episode_state_machine(
    policy: DriftPolicy,
    steps: list[dict[str, Any]],
    expect: list[tuple[bool, list[str], bool, str]],
) -> None:
    decisions = _run(policy, steps)
    for step, decision, (detected, reasons, retrain, summary) in zip(
        steps, decisions, expect, strict=True
    ):
        where = f"t={step['t']}"
        assert decision.status["detected"] is detected, where
        assert [e.reason for e in decision.events] == reasons, where
        assert (decision.retrain is not None) is retrain, where
        assert decision.status["summary"] == summary, where
        assert (decision.conditions[Cond.DRIFT_DETECTED] is not None) is detected, where


def test_episode_ids_are_stable_within_an_episode_and_distinct_across() -> None:
    steps = [
        {"t": 0, "drift": True},
        {"t": 1, "drift": True},
        {"t": 2, "drift": False},
        {"t": 3, "drift": True},
    ]
    ids = [d.status.get("episode") for d in _run(RETRAIN, steps)]
    assert ids[0] == ids[1] == ids[2] == "pumpkins-v3-20250501-120000"
    assert ids[3] == "pumpkins-v3-20250501-120300"
    decisions = _run(RETRAIN, steps)
    assert decisions[0].retrain is not None and decisions[0].retrain.episode == ids[0]
    assert decisions[0].retrain.p_values == {"hue": 1e-05, "size": 0.7}
    assert decisions[2].status["retrainRequested"] is True  # the ended episode keeps its record


def test_cooldown_defers_with_a_condition_message() -> None:
    decisions = _run(
        RETRAIN, [{"t": 0, "drift": True}, {"t": 1, "drift": False}, {"t": 2, "drift": True}]
    )
    reason, message = decisions[2].conditions[Cond.DRIFT_DETECTED] or ("", "")
    assert reason == Reason.DRIFT_DETECTED
    assert "cooldown until 2025-05-01T12:10:00Z" in message
    assert decisions[2].retrain is None and decisions[2].status["retrainRequested"] is False


def _check(previous: Mapping[str, Any] | None, t: int, drift: bool,
           experiment: Mapping[str, Any] | None = None) -> Any:
    return next_drift_state(
        previous,
        _verdict(drift),
        policy=RETRAIN,
        now=T0 + timedelta(minutes=t),
        deployment="pumpkins",
        reference_version=3,
        samples=500,
        last_retrain=LastRetrain.from_status(experiment),
        experiment="classifier",
    )


def test_the_request_is_written_on_the_deployments_own_status() -> None:
    asked = _check(_check(None, 0, False).status, 1, True)
    assert asked.retrain is not None
    request = asked.status["retrain"]
    assert request == asked.retrain.to_status()
    assert request == {
        "episode": "pumpkins-v3-20250501-120100",
        "requestedAt": "2025-05-01T12:01:00Z",
        "experiment": "classifier",
        "reason": Reason.DRIFT_DETECTED,
        "window": 500,
        "pValues": {"hue": 1e-05, "size": 0.7},
    }
    assert asked.status["retrainRequested"] is True
    # the request stays as the last one made, through the episode and after it ends
    later = _check(asked.status, 2, True)
    ended = _check(later.status, 3, False)
    assert later.retrain is None and ended.retrain is None
    assert later.status["retrain"] == ended.status["retrain"] == request


def test_a_lost_status_write_loses_the_request_with_it() -> None:
    first = _check(None, 0, False)
    lost = _check(first.status, 1, True)  # the write carrying episode and request is lost
    assert lost.retrain is not None
    # the Experiment adopts only what is on the deployment's status: it never saw it,
    # so asking again is the one request, not a second one
    again = _check(first.status, 2, True)
    assert again.retrain is not None and again.status["retrainRequested"] is True
    assert again.status["retrain"]["episode"] == again.status["episode"]
    assert _check(again.status, 3, True).retrain is None  # asked once per episode


def test_cooldown_runs_from_the_later_of_both_clocks() -> None:
    asked = _check(None, 0, True)
    cleared = _check(asked.status, 1, False)
    # our own last request holds the cooldown, though the Experiment adopted nothing yet
    own = _check(cleared.status, 2, True)
    assert own.retrain is None and "cooldown until 2025-05-01T12:10:00Z" in (
        own.conditions[Cond.DRIFT_DETECTED] or ("", ""))[1]
    # another deployment's retrain, adopted by the Experiment, holds it too
    other = {"episode": "other-v1-20250501-120500", "requestedAt": "2025-05-01T12:05:00Z",
             "deployment": "other"}
    fresh = _check(None, 9, True, experiment=other)
    assert fresh.retrain is None and fresh.status["retrainRequested"] is False
    assert "cooldown until 2025-05-01T12:15:00Z" in (
        fresh.conditions[Cond.DRIFT_DETECTED] or ("", ""))[1]
    assert _check(fresh.status, 15, True, experiment=other).retrain is not None
    # after a restart, the status read back decides the same: one request per episode
    again = _check(_check(fresh.status, 15, True, experiment=other).status, 16, True,
                   experiment=other)
    assert again.retrain is None


def test_episodes_after_a_retrain_wait_for_the_cooldown() -> None:
    steps = [
        {"t": 0, "drift": True},
        {"t": 1, "drift": False},
        {"t": 2, "drift": True},
        {"t": 3, "drift": False},
        {"t": 11, "drift": True},
    ]
    decisions = _run(RETRAIN, steps)
    assert [d.retrain is not None for d in decisions] == [True, False, False, False, True]
    assert decisions[4].status["episode"] == "pumpkins-v3-20250501-121100"
    assert decisions[4].status["retrain"]["episode"] == "pumpkins-v3-20250501-121100"


def test_accuracy_condition_and_reason_when_only_accuracy_triggers() -> None:
    decision = next_drift_state(
        None,
        _verdict(False),
        policy=RETRAIN,
        now=T0,
        deployment="pumpkins",
        reference_version=1,
        samples=500,
        last_retrain=None,
        live_accuracy=0.5,
        labelled=100,
    )
    assert decision.conditions[Cond.DRIFT_DETECTED] is not None
    assert decision.conditions[Cond.DRIFT_DETECTED][0] == Reason.ACCURACY_BELOW_OBJECTIVE
    assert decision.conditions[Cond.ACCURACY_DEGRADED] == (
        Reason.ACCURACY_BELOW_OBJECTIVE,
        "accuracy 0.50<0.90 over 100 labelled inputs",
    )
    assert decision.retrain is not None
    assert decision.retrain.reason == Reason.ACCURACY_BELOW_OBJECTIVE
    with pytest.raises(ValueError, match="timezone"):
        next_drift_state(
            None,
            None,
            policy=RETRAIN,
            now=datetime(2025, 1, 1),
            deployment="x",
            reference_version=1,
            samples=0,
            last_retrain=None,
        )


def _crd_props(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / name).read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]


def test_status_and_retrain_fit_the_crd_schemas() -> None:
    drift_schema = _crd_props("modeldeployments.yaml")["status"]["properties"]["drift"]
    request_schema = drift_schema["properties"]["retrain"]
    retrain_schema = _crd_props("experiments.yaml")["status"]["properties"]["retrain"]
    for decision in _run(RETRAIN, [{"t": 0, "drift": True, "acc": 0.5, "labelled": 200}]):
        status = json.loads(json.dumps(decision.status, allow_nan=False))
        assert set(status) <= set(drift_schema["properties"])
        feature_keys = set(drift_schema["properties"]["features"]["items"]["properties"])
        assert all(set(f) <= feature_keys for f in status["features"])
        assert decision.retrain is not None
        request = {**decision.retrain.to_status(), "experiment": "x", "feedbackUri": "/f.npz"}
        assert set(request) <= set(request_schema["properties"])
        # what the Experiment adopts: the request, less its target, plus who asked
        adopted = adopt_retrain({}, [("pumpkins", request)], experiment="x", cooldown_s=0)
        assert adopted is not None
        assert set(adopted) <= set(retrain_schema["properties"])


def test_policy_defaults_match_the_crd() -> None:
    spec = _crd_props("modeldeployments.yaml")["spec"]["properties"]["drift"]["properties"]
    defaults = {k: v["default"] for k, v in spec.items() if "default" in v and k != "storage"}
    policy = DriftPolicy.from_spec({})
    assert policy == DriftPolicy()
    assert (
        policy.test,
        policy.window,
        policy.min_samples,
        policy.p_value,
        policy.psi_threshold,
        policy.action,
        policy.cooldown_s,
    ) == (
        defaults["test"],
        defaults["window"],
        defaults["minSamples"],
        defaults["pValue"],
        defaults["psiThreshold"],
        defaults["action"],
        parse_duration(defaults["cooldown"]),
    )
    custom = DriftPolicy.from_spec({"test": "psi", "minSamples": 50}, objective_threshold=0.8)
    assert (custom.test, custom.min_labelled, custom.min_accuracy) == ("psi", 50, 0.8)


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("2h5s", 7205)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "1.5h", "10 m", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
