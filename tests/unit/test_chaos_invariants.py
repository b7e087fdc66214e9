"""The fault harness' invariants catch what they promise to catch.

A harness reporting "0 violations" proves something only if each check fails on the
violation it names; here every invariant meets a crafted violation and a clean case.
"""

from __future__ import annotations

from typing import Any

from tests.support.chaos.harness import Trial, summary
from tests.support.chaos.invariants import (
    LaunchRecord,
    canary_steps,
    commits_matching,
    contains,
    model_versions,
    one_commit,
    one_run_per_key,
    retrain_per_episode,
    rollout_analyses,
    runs_accounted,
    servers_accounted,
)


def launch(gen: int = 1, attempt: int = 1, pathspec: str = "PumpkinFlow/1", *,
           revision: str = "", trigger: str = "") -> LaunchRecord:
    return LaunchRecord(gen, revision, trigger, attempt, pathspec, f"/wd/{pathspec}")


def run(gen: int = 1, pathspec: str = "PumpkinFlow/1", phase: str = "Succeeded", *,
        trigger: str = "", revision: str = "", attempt: int = 1) -> dict[str, Any]:
    return {"generation": gen, "pathspec": pathspec, "phase": phase, "trigger": trigger,
            "flowRevision": revision, "attempt": attempt}


# ------------------------------------------------------------------- one run per key

def test_two_launches_of_one_attempt_are_a_violation() -> None:
    found = one_run_per_key([launch(pathspec="PumpkinFlow/1"), launch(pathspec="PumpkinFlow/2")])
    assert [v.invariant for v in found] == ["one-run-per-key"]
    assert "PumpkinFlow/1" in found[0].detail and "PumpkinFlow/2" in found[0].detail


def test_a_launch_killed_before_it_registered_counts_by_its_workdir() -> None:
    # one launcher recorded in the index without a run, one run: two launches
    a = LaunchRecord(1, "", "", 1, "", "/wd/g1-a1")
    b = LaunchRecord(1, "", "", 1, "PumpkinFlow/7", "/wd/other")
    assert one_run_per_key([a, b])


def test_distinct_generations_revisions_episodes_and_attempts_are_fine() -> None:
    assert not one_run_per_key([
        launch(1, 1, "F/1"), launch(1, 2, "F/2"), launch(2, 1, "F/3"),
        launch(2, 1, "F/4", revision="abc"), launch(2, 1, "F/5", trigger="ep-1")])


def test_one_run_seen_twice_by_two_sources_is_one() -> None:
    assert not one_run_per_key([launch(pathspec="F/1"), launch(pathspec="F/1")])


# ----------------------------------------------------------------- runs accounted

def test_a_run_the_status_forgot_is_a_violation() -> None:
    status = {"runs": [run(pathspec="F/1")]}
    found = runs_accounted([launch(pathspec="F/1"), launch(2, 1, "F/2")], status)
    assert [v.invariant for v in found] == ["run-recorded"] and "F/2" in found[0].detail


def test_the_run_in_flight_is_accounted_for() -> None:
    status = {"runs": [], "currentRun": {"pathspec": "F/1"}}
    assert not runs_accounted([launch(pathspec="F/1")], status)


def test_two_successes_for_one_key_are_a_violation() -> None:
    status = {"runs": [run(pathspec="F/1"), run(pathspec="F/2", attempt=2)]}
    found = runs_accounted([], status)
    assert [v.invariant for v in found] == ["one-success-per-key"]


def test_a_retry_after_a_failure_is_fine() -> None:
    status = {"runs": [run(pathspec="F/1", phase="Failed"), run(pathspec="F/2", attempt=2)]}
    assert not runs_accounted([launch(pathspec="F/1"), launch(1, 2, "F/2")], status)


# ------------------------------------------------------------------ model versions

def test_gapless_versions_pass() -> None:
    assert not model_versions([{"version": 1, "run": "F/1"}, {"version": 2, "run": "F/2"}])
    assert not model_versions([])


def test_a_gap_is_a_violation() -> None:
    found = model_versions([{"version": 1, "run": "F/1"}, {"version": 3, "run": "F/3"}])
    assert [v.invariant for v in found] == ["model-versions"]


def test_a_duplicate_version_is_a_violation() -> None:
    found = model_versions([{"version": 1, "run": "F/1"}, {"version": 1, "run": "F/2"}])
    assert [v.invariant for v in found] == ["model-versions"]


def test_one_run_registered_twice_is_a_violation() -> None:
    found = model_versions([{"version": 1, "run": "F/1"}, {"version": 2, "run": "F/1"}])
    assert [v.invariant for v in found] == ["model-per-run"]


# ------------------------------------------------------------------- canary steps

def a(step: int, verdict: str) -> dict[str, Any]:
    return {"step": step, "verdict": verdict}


def test_a_clean_rollout_with_repeated_inconclusive_analyses_passes() -> None:
    assert not canary_steps([a(0, "inconclusive"), a(0, "inconclusive"), a(0, "pass"),
                             a(1, "pass"), a(2, "fail")])


def test_a_skipped_step_is_a_violation() -> None:
    found = canary_steps([a(0, "pass"), a(2, "pass")])
    assert [v.invariant for v in found] == ["canary-step"]


def test_a_step_decided_twice_is_a_violation() -> None:
    found = canary_steps([a(0, "pass"), a(1, "pass"), a(1, "pass")])
    assert [v.invariant for v in found] == ["canary-decided-twice"]


def test_analysis_after_a_rollback_is_a_violation() -> None:
    found = canary_steps([a(0, "fail"), a(0, "pass")])
    assert [v.invariant for v in found] == ["canary-decided-twice"]


def test_a_rollout_must_start_at_the_first_step() -> None:
    assert [v.invariant for v in canary_steps([a(1, "pass")])] == ["canary-step"]


def test_an_inconclusive_step_may_not_move_on() -> None:
    assert [v.invariant for v in canary_steps([a(0, "inconclusive"), a(1, "pass")])] == [
        "canary-step"]


def test_rollout_analyses_reads_finished_and_current_rollouts() -> None:
    status = {"rollouts": [{"analyses": [a(0, "fail")]}],
              "canary": {"analyses": [a(0, "pass")]}}
    assert rollout_analyses(status) == [[a(0, "fail")], [a(0, "pass")]]


# ------------------------------------------------------------ retrain per episode

def test_one_retrain_per_episode_passes() -> None:
    assert not retrain_per_episode([run(1, "F/1"), run(1, "F/2", trigger="ep1"),
                                    run(2, "F/3", trigger="ep2")])


def test_an_episode_retrained_twice_is_a_violation() -> None:
    found = retrain_per_episode([run(1, "F/2", trigger="ep1"),
                                 run(1, "F/3", trigger="ep1", attempt=2)])
    assert [v.invariant for v in found] == ["retrain-per-episode"]


def test_an_episode_retrained_in_two_generations_is_a_violation() -> None:
    found = retrain_per_episode([run(1, "F/2", trigger="ep1", phase="Failed"),
                                 run(2, "F/3", trigger="ep1")])
    assert [v.invariant for v in found] == ["retrain-per-episode"]


# ------------------------------------------------------------------ one commit

C1 = {("Experiment", "a"): {"parameters": {"lr": 0.01}}, ("Experiment", "b"): {"parameters":
                                                                              {"lr": 0.01}}}
C2 = {("Experiment", "b"): {"parameters": {"lr": 0.02}}, ("Experiment", "c"): {"parameters":
                                                                              {"lr": 0.02}}}
COMMITS = {"c1": C1, "c2": C2}


def live(**objs: float) -> dict[tuple[str, str], dict[str, Any]]:
    # what the API server holds: the commit's fields plus defaults it filled in
    return {("Experiment", n): {"parameters": {"lr": lr}, "backend": "local"}
            for n, lr in objs.items()}


def test_live_objects_equal_to_one_commit_pass() -> None:
    assert commits_matching(live(b=0.02, c=0.02), COMMITS) == ["c2"]
    assert not one_commit(live(b=0.02, c=0.02), COMMITS, "c2")


def test_a_half_applied_commit_is_a_violation() -> None:
    # b moved to c2, c was created, but a was never pruned
    found = one_commit(live(a=0.01, b=0.02, c=0.02), COMMITS)
    assert [v.invariant for v in found] == ["one-commit"]


def test_values_from_two_commits_are_a_violation() -> None:
    assert one_commit(live(b=0.01, c=0.02), COMMITS)


def test_settling_at_an_older_commit_is_a_violation() -> None:
    found = one_commit(live(a=0.01, b=0.01), COMMITS, head="c2")
    assert [v.invariant for v in found] == ["one-commit"] and "not the head" in found[0].detail


def test_contains_compares_numbers_by_value_and_bools_by_identity() -> None:
    assert contains({"x": 1.0, "y": [1, 2]}, {"x": 1, "y": [1, 2]})
    assert not contains({"x": True}, {"x": 1})
    assert not contains({"y": [1, 2, 3]}, {"y": [1, 2]})


# ----------------------------------------------------------------------- servers

def test_the_recorded_servers_running_is_clean() -> None:
    assert servers_accounted({8001, 8002}, {8001, 8002}) == []


def test_a_server_nobody_recorded_is_a_leak() -> None:
    found = servers_accounted({8001, 8003}, {8001})
    assert [v.invariant for v in found] == ["server-leaked"] and "8003" in found[0].detail


def test_a_recorded_server_that_is_gone_is_a_violation() -> None:
    found = servers_accounted(set(), {8001})
    assert [v.invariant for v in found] == ["server-missing"]


# ----------------------------------------------------------------------- summary

def test_summary_counts_per_phase() -> None:
    trials = [Trial("run-end", "operator-kill", 1, 1, 0.5, True, 3.0),
              Trial("run-end", "operator-kill", 2, 2, 0.9, False, 5.0, ["x: y"]),
              Trial("run-end", "operator-kill", 3, 3, 0.1, True, None, error="Timeout")]
    s = summary(trials)["run-end"]
    assert s == {"fault": "operator-kill", "trials": 3, "in_window": 2, "violations": 1,
                 "errors": 1, "median_settle_s": 4.0}
