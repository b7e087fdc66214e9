"""Seldon mode decisions (pure): endpoint, stale status, failure, canary PromQL."""

from __future__ import annotations

import datetime as dt

from controller.canary import Policy, serving_failed, steps_hash
from controller.rollout import Model, Target, plan
from controller.serving.metrics_source import LabelScheme, window_queries
from controller.serving.seldon_status import (
    STATUS_WAIT_S,
    assess,
    caught_up,
    endpoint,
    pending_write,
    pods_change,
)

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
ADDRESS = "http://classifier-stable.farm.svc.cluster.local:8000/api/v1.0/predictions"


def sdep(rv: str = "10", state: str | None = "Available", predictors=None, **status) -> dict:
    preds = predictors or [{"name": "stable", "traffic": 100, "replicas": 1,
                            "graph": {"modelUri": "s3://m/1"}}]
    st = {"address": {"url": ADDRESS}, **({"state": state} if state else {}), **status}
    return {"metadata": {"name": "classifier", "namespace": "farm", "resourceVersion": rv},
            "spec": {"predictors": preds}, "status": st}


def test_endpoint_is_seldons_address_as_is_or_the_gateways_split() -> None:
    assert endpoint(sdep(), "") == ADDRESS  # no second /api/v1.0/predictions
    assert endpoint(sdep(), "https://gw.farm/") == (
        "https://gw.farm/seldon/farm/classifier/api/v1.0/predictions")
    assert endpoint({"metadata": {"name": "c", "namespace": "n"}}, "") is None  # no host invented


def test_only_pod_changes_start_a_wait() -> None:
    stable = {"name": "stable", "traffic": 100, "graph": {"modelUri": "s3://m/1"}}
    canary = {"name": "canary", "traffic": 10, "graph": {"modelUri": "s3://m/2"}}
    cur = sdep(predictors=[stable])
    assert pods_change(None, sdep(predictors=[stable]))
    assert pods_change(cur, sdep(predictors=[{**stable, "traffic": 90}, canary]))
    assert not pods_change(cur, sdep(predictors=[{**stable, "traffic": 50}]))
    assert pods_change(cur, sdep(predictors=[{**stable, "graph": {"modelUri": "s3://m/2"}}]))
    written = sdep(rv="11")
    assert pending_write(None, False, written, NOW) is None
    assert pending_write(None, True, written, NOW) == {"resourceVersion": "11",
                                                       "since": "2026-11-27T00:00:00Z"}
    # a traffic-only write during a wait moves the wait on to that write, keeping its start
    assert pending_write({"resourceVersion": "9", "since": "2026-11-26T23:59:50Z"}, False,
                         written, NOW) == {"resourceVersion": "11",
                                           "since": "2026-11-26T23:59:50Z"}


def test_stale_available_is_not_believed_until_seldon_writes_after_us() -> None:
    pending = {"resourceVersion": "11", "since": "2026-11-27T00:00:00Z"}
    stale = assess(sdep(rv="11"), pending, NOW)
    assert stale.health == "pending" and "previous" in stale.message
    assert not caught_up(sdep(rv="9"), pending, NOW)  # an older cached copy
    assert caught_up(sdep(rv="12"), pending, NOW)
    assert assess(sdep(rv="12"), pending, NOW).health == "available"
    assert assess(sdep(rv="12", state="Creating"), pending, NOW).health == "pending"
    assert assess(sdep(rv="12"), None, NOW).health == "available"


def test_a_wait_ends_when_seldon_has_nothing_new_to_write() -> None:
    # Seldon skips its status write when its verdict is unchanged: the wait is bounded.
    pending = {"resourceVersion": "11", "since": "2026-11-27T00:00:00Z"}
    later = NOW + dt.timedelta(seconds=STATUS_WAIT_S)
    assert not caught_up(sdep(rv="11"), pending, NOW + dt.timedelta(seconds=1))
    assert caught_up(sdep(rv="11"), pending, later)
    assert assess(sdep(rv="11"), pending, later).health == "available"


def test_only_the_progress_deadline_failure_is_final() -> None:
    failed = assess(sdep(state="Failed", description="Deployment is no longer progressing "
                         "and not available."), None, NOW)
    assert failed.health == "failed" and "no longer progressing" in failed.message
    # any other reconcile error: Seldon retries, so it is shown but not acted on
    retried = assess(sdep(state="Failed", description="Operation cannot be fulfilled: "
                          "the object has been modified"), None, NOW)
    assert retried.health == "pending" and "cannot be fulfilled" in retried.message
    # a Failed from before our write says nothing about the new spec
    assert assess(sdep(rv="11", state="Failed", description="no longer progressing"),
                  {"resourceVersion": "11", "since": "2026-11-27T00:00:00Z"},
                  NOW).health == "pending"


def test_a_failed_canary_rolls_back_to_stable() -> None:
    policy = Policy([10, 50, 100], 2.0, 10, 0.05, 500, 0.3)
    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    status = {"stable": {"version": 1, "modelUri": "s3://m/1"},
              "canary": {"version": 2, "modelUri": "s3://m/2", "step": 0, "weight": 10,
                         "stepsHash": steps_hash([10, 50, 100]),
                         "stepStartedAt": "2026-11-27T00:00:00Z"}}
    p = plan(status, Target(Model(2, "s3://m/2"), "", ""), policy, 3,
             serving_failed("Seldon Core reports the SeldonDeployment Failed: stuck"), now)
    assert p.decision == "rollback" and p.canary is None and p.stable["version"] == 1
    assert "stuck" in p.rejected[-1]["message"]


def test_window_queries() -> None:
    q = window_queries(LabelScheme(), "farm", "classifier", "canary", 2, 2500)
    sel = ('namespace="farm",deployment_name="classifier",predictor_name="canary",'
           'predictor_version="v2"')
    assert q["requests"] == ("sum by (code) (increase(seldon_api_executor_server_requests_"
                             f'seconds_count{{{sel},service="predictions"}}[2500ms]))')
    assert q["p99"] == ("histogram_quantile(0.99, sum by (le) (increase(seldon_api_executor_"
                        f'server_requests_seconds_bucket{{{sel},service="predictions"}}'
                        "[2500ms])))")
    # the model server's class counter has no service label
    assert q["classes"] == f"sum by (class) (increase(trellis_predictions_total{{{sel}}}[2500ms]))"
    other = window_queries(LabelScheme("kubernetes_namespace", "seldon_deployment"), "farm",
                           "classifier", "stable", 1, 0)
    assert 'kubernetes_namespace="farm",seldon_deployment="classifier"' in other["requests"]
    assert "[1ms]" in other["requests"]
    bare = window_queries(LabelScheme(""), "farm", "classifier", "stable", 1, 1000)
    assert "namespace" not in bare["requests"]
