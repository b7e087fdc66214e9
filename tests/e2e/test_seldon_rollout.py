"""Seldon mode: the SeldonDeployment on the API server at every step of a rollout.

No Seldon Core operator runs here, so the test plays its two roles that the rollout
depends on: it writes the SeldonDeployment's status as Seldon 1.17.1 does (Available,
Failed, its address), and it records the executor metrics (served by a Prometheus
stand-in that evaluates the operator's real queries).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_prometheus import FakePrometheus
from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.seldon import (
    address,
    install_crd,
    mark_available,
    mark_failed,
    mdep_status,
    predictors,
    register,
    setup_objects,
    traffic,
    wait_predictors,
)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture
def prometheus(monkeypatch: pytest.MonkeyPatch, namespace: str) -> Iterator[FakePrometheus]:
    # the namespace label, as a PodMonitor or the kubernetes-pods scrape adds it
    prom = FakePrometheus(common_labels={"namespace": namespace}).start()
    monkeypatch.setenv("TRELLIS_PROMETHEUS_URL", prom.url)
    yield prom
    prom.stop()


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> str:
    """The ingress that serves Seldon's traffic split (set before the operator starts)."""
    monkeypatch.setenv("TRELLIS_SELDON_GATEWAY_URL", "http://seldon.farm/")
    return "http://seldon.farm"


def ready(cluster: Cluster, ns: str) -> tuple[str, str, str]:
    cond = condition(cluster.get("mdep", "classifier", ns), "Ready") or {}
    return cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")


@pytest.fixture
def seldon_crd(cluster: Cluster) -> None:
    install_crd(cluster)


def test_rollout_and_rollback_drive_the_seldondeployment(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: FakePrometheus,
        gateway: str, operator: None) -> None:
    setup_objects(cluster, namespace)
    wait_predictors(cluster, namespace, [("stable", "v1", 100)])
    sdep = cluster.get("sdep", "classifier", namespace)
    owner = sdep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelDeployment" and owner["controller"] is True
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == "s3://farm-models/classifier/1"
    assert condition(cluster.get("mdep", "classifier", namespace), "Ready")["status"] == "False"
    mark_available(cluster, namespace)
    wait_for(lambda: mdep_status(cluster, namespace).get("phase") == "Serving", timeout=30,
             what="Serving")
    # the split is served by the gateway, never at Seldon's predictor address + the path
    assert mdep_status(cluster, namespace)["endpoint"] == (
        f"{gateway}/seldon/{namespace}/classifier/api/v1.0/predictions")

    register(cluster, namespace, 1, 2)  # a better v2 arrives: canary starts by itself
    # Seldon has not taken the new predictor yet: its old Available is not believed
    wait_for(lambda: predictors(cluster, namespace) == [("stable", "v1", 90),
                                                        ("canary", "v2", 10)],
             timeout=30, what="the canary predictor")
    wait_for(lambda: ready(cluster, namespace)[:2] == ("False", "Deploying"), timeout=30,
             what="Ready=False Deploying while Seldon's status is stale")
    assert "previous" in ready(cluster, namespace)[2]
    assert mdep_status(cluster, namespace)["seldonWrite"]["resourceVersion"]
    wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)])
    for stable_w, canary_w in ((50, 50), (0, 100)):
        # failed feedback calls are not predictions; a restarted canary pod resets counters
        traffic(prometheus, 2, 1, feedback_errors=30)
        prometheus.restart("canary", 2)
        traffic(prometheus, 2, 1)
        wait_predictors(cluster, namespace, [("stable", "v1", stable_w),
                                             ("canary", "v2", canary_w)])
    traffic(prometheus, 2, 1)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)])
    st = mdep_status(cluster, namespace)
    assert st["stableVersion"] == "v2" and "canary" not in st
    assert st["rollouts"][-1]["outcome"] == "promoted"
    assert [a["weight"] for a in st["rollouts"][-1]["analyses"]] == [10, 50, 100]
    # feedback errors left out; a reset counter still counted from where it restarted
    assert all(a["errorRate"] == 0 and a["requests"] >= 20
               for a in st["rollouts"][-1]["analyses"])
    assert all('service="predictions"' in q and "increase(" in q
               for q in prometheus.queries if "seldon_api_executor" in q)
    assert all(f'namespace="{namespace}"' in q for q in prometheus.queries)

    register(cluster, namespace, 1, 2, 3)  # a bad v3: errors on a third of requests
    wait_predictors(cluster, namespace, [("stable", "v2", 90), ("canary", "v3", 10)])
    traffic(prometheus, 3, 2, errors=10)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)])
    obj = cluster.get("mdep", "classifier", namespace)
    st = obj["status"]
    assert st["rejectedVersions"][0]["version"] == 3
    assert "error rate" in st["rejectedVersions"][0]["message"]
    rolled = condition(obj, "RolledBack")
    assert rolled["status"] == "True" and "v3" in rolled["message"]
    events = cluster.kubectl("get", "events", "-n", namespace).stdout
    assert "CanaryRolledBack" in events and "CanaryPromoted" in events
    # a rejected version is not retried under `latest`
    register(cluster, namespace, 1, 2, 3)
    traffic(prometheus, 3, 2)
    assert predictors(cluster, namespace) == [("stable", "v2", 100)]

    # v4's pods never come up: Seldon says Failed, and the canary goes back to stable
    register(cluster, namespace, 1, 2, 3, 4)
    wait_predictors(cluster, namespace, [("stable", "v2", 90), ("canary", "v4", 10)])
    mark_failed(cluster, namespace)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)])
    st = mdep_status(cluster, namespace)
    assert st["rejectedVersions"][-1]["version"] == 4
    assert "Deployment is no longer progressing" in st["rejectedVersions"][-1]["message"]
    mark_available(cluster, namespace)
    wait_for(lambda: ready(cluster, namespace)[:2] == ("True", "Serving"), timeout=30,
             what="Serving v2 again")
    # a reconcile error Seldon retries is shown with its words, and acted on by nobody
    mark_failed(cluster, namespace, "Operation cannot be fulfilled: the object has been "
                                    "modified")
    wait_for(lambda: "cannot be fulfilled" in ready(cluster, namespace)[2], timeout=30,
             what="Seldon's retried error on Ready")
    assert predictors(cluster, namespace) == [("stable", "v2", 100)]
    # the stable predictor's Deployment passes its progress deadline: shown as failed
    mark_failed(cluster, namespace)
    wait_for(lambda: ready(cluster, namespace)[:2] == ("False", "ServingFailed"), timeout=30,
             what="Ready=False ServingFailed")
    assert "no longer progressing" in ready(cluster, namespace)[2]
    assert mdep_status(cluster, namespace)["phase"] == "Failed"
    assert "ServingFailed" in cluster.kubectl("get", "events", "-n", namespace).stdout
    mark_available(cluster, namespace)
    wait_for(lambda: ready(cluster, namespace)[:2] == ("True", "Serving"), timeout=30,
             what="Serving once Seldon recovers")


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: FakePrometheus,
        operator_env: dict[str, str], tmp_path: Path) -> None:
    env = {**operator_env, "TRELLIS_PROMETHEUS_URL": prometheus.url}
    first = OperatorProcess(env, tmp_path / "op1.log", ["-n", namespace]).start()
    try:
        setup_objects(cluster, namespace)
        wait_predictors(cluster, namespace, [("stable", "v1", 100)], timeout=60)
        mark_available(cluster, namespace)
        # no gateway configured: Seldon's own address, as is (it bypasses the split)
        wait_for(lambda: mdep_status(cluster, namespace).get("endpoint") == address(namespace),
                 timeout=30, what="the predictor's address as the endpoint")
        register(cluster, namespace, 1, 2)
        wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)])
        traffic(prometheus, 2, 1)
        wait_predictors(cluster, namespace, [("stable", "v1", 50), ("canary", "v2", 50)])
        first.kill()
    finally:
        first.stop()
    step_before = mdep_status(cluster, namespace)["canary"]
    second = OperatorProcess(env, tmp_path / "op2.log", ["-n", namespace]).start()
    try:
        # no traffic recorded: the restarted operator analyses the step, finds it
        # inconclusive and holds it, neither resetting to 10% nor jumping to 100%
        def held():
            canary = mdep_status(cluster, namespace).get("canary") or {}
            return any(a["verdict"] == "inconclusive" for a in canary.get("analyses", []))
        wait_for(held, timeout=30, what="an inconclusive analysis after the restart")
        assert predictors(cluster, namespace) == [("stable", "v1", 50), ("canary", "v2", 50)]
        canary = mdep_status(cluster, namespace)["canary"]
        assert (canary["step"], canary["weight"], canary["startedAt"]) == (
            step_before["step"], step_before["weight"], step_before["startedAt"])
        traffic(prometheus, 2, 1)
        wait_predictors(cluster, namespace, [("stable", "v1", 0), ("canary", "v2", 100)])
        traffic(prometheus, 2, 1)
        wait_predictors(cluster, namespace, [("stable", "v2", 100)])
    finally:
        second.stop()
    analyses = mdep_status(cluster, namespace)["rollouts"][-1]["analyses"]
    assert [a["weight"] for a in analyses if a["verdict"] == "pass"] == [10, 50, 100]
