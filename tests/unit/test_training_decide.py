"""What an Experiment does next (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.training.decide import (
    Backoff,
    Idle,
    Launch,
    Observe,
    RunKey,
    adopt_retrain,
    next_action,
    next_version,
    objective_met,
    phase_of,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
SPEC = {"retry": {"limit": 1, "backoffSeconds": 10}}


def run(gen: int, phase: str, attempt: int = 1, trigger: str = "",
        finished: str = "2026-11-27T11:59:00Z") -> dict:
    return {"generation": gen, "phase": phase, "attempt": attempt, "trigger": trigger,
            "finishedAt": finished}


def test_new_generation_launches_once() -> None:
    assert next_action(SPEC, {}, 1, NOW) == Launch(RunKey(1), 1)
    assert next_action(SPEC, {"runs": [run(1, "Succeeded")]}, 1, NOW) == Idle()
    assert next_action(SPEC, {"runs": [run(1, "Succeeded")]}, 2, NOW) == Launch(RunKey(2), 1)


def test_a_current_run_is_observed_never_relaunched() -> None:
    current = {"generation": 1, "attempt": 1}
    assert next_action(SPEC, {"currentRun": current}, 1, NOW) == Observe(current)


def test_failed_runs_retry_with_backoff_then_stop() -> None:
    recent = run(1, "Failed", finished="2026-11-27T11:59:55Z")
    action = next_action(SPEC, {"runs": [recent]}, 1, NOW)
    assert isinstance(action, Backoff) and action.attempt == 2 and 4 < action.seconds <= 5
    assert next_action(SPEC, {"runs": [run(1, "Failed")]}, 1, NOW) == Launch(RunKey(1), 2)
    both = [run(1, "Failed"), run(1, "Failed", attempt=2)]
    assert next_action(SPEC, {"runs": both}, 1, NOW) == Idle(exhausted=RunKey(1))


def test_one_retrain_per_episode() -> None:
    status = {"runs": [run(1, "Succeeded")], "retrain": {"episode": "e1"}}
    assert next_action(SPEC, status, 1, NOW) == Launch(RunKey(1, "e1"), 1)
    status["runs"].append(run(1, "Succeeded", trigger="e1"))
    assert next_action(SPEC, status, 1, NOW) == Idle()
    # a new generation does not replay an old episode
    assert next_action(SPEC, status, 2, NOW) == Launch(RunKey(2), 1)
    status["runs"].append(run(2, "Succeeded"))
    assert next_action(SPEC, status, 2, NOW) == Idle()


def test_objective() -> None:
    assert objective_met({"metric": "accuracy", "goal": "maximize", "threshold": 0.9},
                         {"accuracy": 0.93}) == (True, "accuracy=0.9300 >= 0.9")
    assert objective_met({"metric": "loss", "goal": "minimize", "threshold": 0.2},
                         {"loss": 0.3})[0] is False
    ok, why = objective_met({"metric": "f1", "goal": "maximize", "threshold": 0.9},
                            {"accuracy": 1.0})
    assert not ok and "no metric 'f1'" in why


def test_versions_and_phase() -> None:
    assert next_version([]) == 1
    assert next_version([{"version": 1}, {"version": 4}]) == 5
    assert phase_of({}, 1) == "Pending"
    assert phase_of({"currentRun": {"x": 1}}, 1) == "Running"
    assert phase_of({"runs": [run(1, "Failed")]}, 1) == "Failed"


def test_a_flow_code_change_is_a_new_run_for_the_same_generation() -> None:
    status = {"runs": [{**run(1, "Succeeded"), "flowRevision": "abc"}]}
    assert next_action(SPEC, status, 1, NOW, revision="abc") == Idle()
    assert next_action(SPEC, status, 1, NOW, revision="def") == Launch(RunKey(1, "", "def"), 1)
    # an episode's retrain is not replayed for new code
    status = {"runs": [{**run(1, "Succeeded"), "flowRevision": "def"},
                       {**run(1, "Succeeded", trigger="e1"), "flowRevision": "abc"}],
              "retrain": {"episode": "e1"}}
    assert next_action(SPEC, status, 1, NOW, revision="def") == Idle()


# ------------------------------------------------- adopting a deployment's retrain request
def req(episode: str, at: str = "2026-11-27T11:00:00Z", **extra: str) -> dict:
    return {"episode": episode, "requestedAt": at, "experiment": "classifier",
            "reason": "DriftDetected", "window": 500, "pValues": {"hue": 1e-5}, **extra}


ADOPTED = {"episode": "e1", "requestedAt": "2026-11-27T10:00:00Z", "deployment": "classifier"}
CREATED = dt.datetime(2026, 11, 27, 9, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("status", "requests", "cooldown", "expect"), [
    ({}, [("mdep", req("e1", feedbackUri="/s/e1.npz"))], 0,
     {**{k: v for k, v in req("e1").items() if k != "experiment"},
      "feedbackUri": "/s/e1.npz", "deployment": "mdep"}),
    ({}, [], 0, None),
    # adopted once: the same request read again is not adopted again
    ({"retrain": {**ADOPTED, "requestedAt": "2026-11-27T11:00:00Z"}},
     [("classifier", req("e1"))], 0, None),
    # an episode that ran already (its record may be a different request of it)
    ({"runs": [run(1, "Succeeded", trigger="e2")]}, [("mdep", req("e2"))], 0, None),
    # a run in flight keeps the retrain it was launched for
    ({"currentRun": {"generation": 1}}, [("mdep", req("e2"))], 0, None),
    # older than the last adopted one: made before that retrain (or passed over)
    ({"retrain": ADOPTED}, [("mdep", req("e2", "2026-11-27T09:30:00Z"))], 0, None),
    # within the Experiment's cooldown of the last adopted request; after it
    ({"retrain": ADOPTED}, [("mdep", req("e2", "2026-11-27T10:05:00Z"))], 600, None),
    ({"retrain": ADOPTED}, [("mdep", req("e2", "2026-11-27T10:10:00Z"))], 600, "e2"),
    # for another Experiment (the deployment was repointed), or a deleted namesake
    ({}, [("mdep", {**req("e2"), "experiment": "other"})], 0, None),
    ({}, [("mdep", req("e2", "2026-11-27T08:00:00Z"))], 0, None),
    ({}, [("mdep", {"episode": "e2"})], 0, None),
    # two deployments at once: the earliest first; the other waits its turn
    ({}, [("b", req("e3", "2026-11-27T11:00:00Z")), ("a", req("e4", "2026-11-27T11:00:05Z"))],
     0, "e3"),
], ids=["adopt", "none", "adopted-once", "already-run", "run-in-flight", "older",
        "cooldown", "after-cooldown", "other-experiment", "before-created", "no-time",
        "earliest-first"])
def test_adopt_retrain(status: dict, requests: list, cooldown: float, expect) -> None:
    adopted = adopt_retrain(status, requests, experiment="classifier", cooldown_s=cooldown,
                            created=CREATED)
    if isinstance(expect, str):
        assert adopted is not None and adopted["episode"] == expect
    else:
        assert adopted == expect


def test_an_adopted_retrain_launches_one_run_for_its_episode() -> None:
    status: dict = {"runs": [run(1, "Succeeded")]}
    status["retrain"] = adopt_retrain(status, [("mdep", req("e1"))], experiment="classifier",
                                      cooldown_s=0, created=CREATED)
    assert next_action(SPEC, status, 1, NOW) == Launch(RunKey(1, "e1"), 1)
    status["runs"].append(run(1, "Succeeded", trigger="e1"))
    # the request is still on the deployment's status: neither adopted nor run again
    assert adopt_retrain(status, [("mdep", req("e1"))], experiment="classifier",
                         cooldown_s=0, created=CREATED) is None
    assert next_action(SPEC, status, 1, NOW) == Idle()
