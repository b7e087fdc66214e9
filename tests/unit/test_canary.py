"""Canary analysis and rollout decisions (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.canary import (
    Policy,
    Window,
    analyse,
    decide,
    parse_duration,
    steps_hash,
    total_variation,
    weights,
)
from controller.rollout import Target, canary_due, plan, select_target

POLICY = Policy(steps=[10, 50, 100], interval_s=30, min_requests=20, max_error_rate=0.05,
                max_latency_p99_ms=500, max_prediction_shift=0.3)
T0 = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("250ms", 0.25),
                                               ("2h", 7200)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "30", "soon", "1m 30s", "-5s"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


GOOD = {"bad": 40, "good": 60}
CASES = [
    # (canary window, stable window, verdict, words)
    (Window(100, 0, 20.0, GOOD), Window(400, 0, 20.0, GOOD), "pass", "100 requests"),
    (Window(10, 0, 20.0, GOOD), None, "inconclusive", "10/20"),
    (Window(100, 20, 20.0, GOOD), None, "fail", "error rate 0.200"),
    (Window(5, 4, 20.0, GOOD), None, "fail", "error rate"),  # errs early: no more traffic
    (Window(5, 1, 20.0, GOOD), None, "inconclusive", "5/20"),  # one error in five: too few
    (Window(100, 0, 900.0, GOOD), None, "fail", "p99 latency 900ms"),
    (Window(100, 0, 20.0, {"bad": 95, "good": 5}), Window(400, 0, 20.0, GOOD), "fail",
     "shifted by 0.55"),
    (Window(100, 0, 20.0, {"bad": 95, "good": 5}), Window(5, 0, 20.0, GOOD), "pass", ""),
    (Window(100, 5, None, GOOD), None, "pass", "error rate 0.050"),  # at the bound passes
]


@pytest.mark.parametrize(("canary", "stable", "verdict", "words"), CASES)
def test_analyse(canary: Window, stable: Window | None, verdict: str, words: str) -> None:
    result = analyse(POLICY, canary, stable)
    assert result.verdict == verdict, result.reason
    assert words in result.reason


def test_total_variation() -> None:
    assert total_variation({"a": 1}, {"a": 5}) == 0
    assert total_variation({"a": 1}, {"b": 1}) == 1
    assert total_variation({}, {"a": 1}) is None


@pytest.mark.parametrize(("step", "verdict", "decision"), [
    (0, "pass", "advance"), (1, "pass", "advance"), (2, "pass", "promote"),
    (0, "fail", "rollback"), (2, "fail", "rollback"), (1, "inconclusive", "extend"),
])
def test_decide(step: int, verdict: str, decision: str) -> None:
    analysis = analyse(POLICY, Window(100, 0 if verdict != "fail" else 50, 1.0, GOOD), None) \
        if verdict != "inconclusive" else analyse(POLICY, Window(1, 0, 1.0, GOOD), None)
    assert analysis.verdict == verdict
    assert decide(POLICY, step, analysis) == decision
    assert decide(POLICY, step, None) == "wait"


def test_weights_sum_to_100() -> None:
    assert weights(1, 2, 10) == {"stable": 90, "canary": 10}
    assert weights(1, None, 0) == {"stable": 100}
    assert weights(None, 2, 50) == {"canary": 100}


MODELS = [{"version": 1, "artifactUri": "file:///m/1"},
          {"version": 2, "artifactUri": "file:///m/2"},
          {"version": 3, "artifactUri": "file:///m/3"}]


def test_select_latest_skips_rejected() -> None:
    t = select_target({"model": {"version": "latest"}}, MODELS, [{"version": 3}], 1)
    assert t.model and t.model.version == 2


def test_select_explicit_rejected_needs_a_new_generation() -> None:
    rejected = [{"version": 3, "generation": 4}]
    assert select_target({"model": {"version": 3}}, MODELS, rejected, 4).model is None
    assert select_target({"model": {"version": 3}}, MODELS, rejected, 5).model.version == 3


def test_select_unknown_and_empty() -> None:
    t = select_target({"model": {"version": 9}}, MODELS, [], 1)
    assert t.model is None and "not registered" in t.message
    assert select_target({"model": {"version": "latest"}}, [], [], 1).reason == "ModelNotReady"


def target(v: int | None) -> Target:
    if v is None:
        return Target(None, "ModelNotReady", "none")
    return select_target({"model": {"version": v}}, MODELS, [], 1)


def test_first_version_deploys_directly() -> None:
    p = plan({}, target(1), POLICY, 1, None, T0)
    assert p.decision == "deploy" and p.stable["version"] == 1 and p.canary is None


def test_walk_through_a_rollout_and_promotion() -> None:
    status = {"stable": {"version": 1, "modelUri": "file:///m/1"}}
    p = plan(status, target(2), POLICY, 1, None, T0)
    assert p.decision == "start" and p.canary["weight"] == 10 and p.needs_baseline
    status = {"stable": p.stable, "canary": p.canary}
    assert not canary_due(p.canary, POLICY, T0 + dt.timedelta(seconds=29))
    assert canary_due(p.canary, POLICY, T0 + dt.timedelta(seconds=30))
    ok = analyse(POLICY, Window(50, 0, 10.0, GOOD), Window(50, 0, 10.0, GOOD))
    for expected_weight in (50, 100):
        p = plan(status, target(2), POLICY, 1, ok, T0)
        assert p.decision == "advance" and p.canary["weight"] == expected_weight
        status = {"stable": p.stable, "canary": p.canary}
    p = plan(status, target(2), POLICY, 1, ok, T0)
    assert p.decision == "promote"
    assert p.stable["version"] == 2 and p.canary is None
    assert p.rollouts[-1]["outcome"] == "promoted" and len(p.rollouts[-1]["analyses"]) == 3


def test_rollback_rejects_the_version_and_keeps_stable() -> None:
    status = {"stable": {"version": 1, "modelUri": "u1"},
              "canary": {"version": 3, "modelUri": "u3", "step": 1, "weight": 50,
                         "stepsHash": steps_hash(POLICY.steps), "stepStartedAt": "x"}}
    bad = analyse(POLICY, Window(100, 30, 10.0, GOOD), None)
    p = plan(status, target(3), POLICY, 7, bad, T0)
    assert p.decision == "rollback" and p.canary is None and p.stable["version"] == 1
    assert p.rejected == [{"version": 3, "reason": "CanaryRolledBack", "generation": 7,
                           "message": "step 2/3 at 50%: " + bad.reason,
                           "at": "2026-11-27T12:00:00Z"}]
    # latest now stays on v1 and does not retry v3
    again = select_target({"model": {"version": "latest"}}, MODELS[:3], p.rejected, 7)
    assert again.model.version == 2


def test_edited_steps_restart_the_rollout() -> None:
    status = {"stable": {"version": 1, "modelUri": "u1"},
              "canary": {"version": 2, "modelUri": "u2", "step": 1, "weight": 50,
                         "stepsHash": steps_hash([10, 50, 100]), "stepStartedAt": "x"}}
    policy = Policy(**{**POLICY.__dict__, "steps": [25, 100]})
    p = plan(status, target(2), policy, 2, None, T0)
    assert p.canary["step"] == 0 and p.canary["weight"] == 25


def test_a_newer_target_supersedes_the_canary() -> None:
    status = {"stable": {"version": 1, "modelUri": "u1"},
              "canary": {"version": 2, "modelUri": "u2", "step": 0, "weight": 10,
                         "stepsHash": steps_hash(POLICY.steps), "stepStartedAt": "x"}}
    p = plan(status, target(3), POLICY, 1, None, T0)
    assert p.canary["version"] == 3 and p.rollouts[-1]["outcome"] == "superseded"
    assert p.rejected == []
