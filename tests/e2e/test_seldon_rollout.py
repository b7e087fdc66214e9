"""Seldon mode: the SeldonDeployment on the API server at every step of a rollout, each
step decided by real PromQL.

No Seldon Core operator runs here, so the test plays its roles: it writes the
SeldonDeployment's status as Seldon 1.17.1 does (``tests.support.seldon``) and runs what
its pods would (``tests.support.seldon_host``): per predictor a real model server behind
the executor's metrics stand-in, scraped every second by a real Prometheus, with an
ingress splitting a steady stream of requests by the predictors' weights. The operator's
canary analysis queries that Prometheus as it would a cluster's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.prometheus import Prometheus
from tests.support.seldon import (
    address,
    errors_across_a_reset,
    failed_share,
    install_crd,
    mark_available,
    mark_failed,
    mdep_status,
    passes,
    predictors,
    register,
    setup_objects,
    wait_predictors,
)
from tests.support.seldon_host import Ingress, SeldonHost

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


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


def operator_queries(prom: Prometheus) -> list[str]:
    return [q for q in prom.queries() if "deployment_name=" in q]


def test_rollout_and_rollback_drive_the_seldondeployment(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: Prometheus,
        seldon_host: SeldonHost, ingress: Ingress, gateway: str, operator: None) -> None:
    setup_objects(cluster, namespace)
    wait_predictors(cluster, namespace, [("stable", "v1", 100)], host=seldon_host)
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
    ingress.start()  # townsfolk send photos from now on, feedback on every second answer

    register(cluster, namespace, 1, 2)  # a better v2 arrives: canary starts by itself
    # Seldon has not taken the new predictor yet: its old Available is not believed
    wait_for(lambda: predictors(cluster, namespace) == [("stable", "v1", 90),
                                                        ("canary", "v2", 10)],
             timeout=30, what="the canary predictor")
    wait_for(lambda: ready(cluster, namespace)[:2] == ("False", "Deploying"), timeout=30,
             what="Ready=False Deploying while Seldon's status is stale")
    assert "previous" in ready(cluster, namespace)[2]
    assert mdep_status(cluster, namespace)["seldonWrite"]["resourceVersion"]
    wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)],
                    host=seldon_host)
    # each step waits for its own window's requests (the canary's first ones reach
    # Prometheus only once it discovered the new pod: a few seconds)
    for stable_w, canary_w in ((50, 50), (0, 100)):
        wait_predictors(cluster, namespace, [("stable", "v1", stable_w),
                                             ("canary", "v2", canary_w)],
                        timeout=60, host=seldon_host)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)], timeout=60,
                    host=seldon_host)
    st = mdep_status(cluster, namespace)
    assert st["stableVersion"] == "v2" and "canary" not in st
    assert st["rollouts"][-1]["outcome"] == "promoted"
    passed = passes(st["rollouts"][-1]["analyses"])
    assert [a["weight"] for a in passed] == [10, 50, 100]
    assert all(a["errorRate"] == 0 and a["requests"] >= 10 and a["latencyP99Ms"] < 500
               for a in passed), passed
    assert ingress.count("canary", "feedback", 200) > 0  # on the same histogram ...
    queries = operator_queries(prometheus)
    assert queries and all('service="predictions"' in q and "increase(" in q
                           for q in queries if "seldon_api_executor" in q)  # ... left out
    assert all(f'namespace="{namespace}"' in q for q in queries)

    register(cluster, namespace, 1, 2, 3)  # a bad v3: its model fails half its inputs
    wait_predictors(cluster, namespace, [("stable", "v2", 90), ("canary", "v3", 10)],
                    host=seldon_host)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)], timeout=60,
                    host=seldon_host)
    obj = cluster.get("mdep", "classifier", namespace)
    st = obj["status"]
    rejected = st["rejectedVersions"][0]
    assert rejected["version"] == 3 and "step 1/3 at 10%" in rejected["message"]
    errors, requests = failed_share(rejected["message"])
    # the few requests a 10% step gets are not an even sample of the inputs: the rate is
    # anywhere well above the threshold, not exactly a half
    assert errors >= 3 and errors / requests >= 0.2, rejected["message"]
    assert st["rollouts"][-1]["outcome"] == "rolledBack"
    assert not passes(st["rollouts"][-1]["analyses"])  # never advanced past its first step
    rolled = condition(obj, "RolledBack")
    assert rolled["status"] == "True" and "v3" in rolled["message"]
    events = cluster.kubectl("get", "events", "-n", namespace).stdout
    assert "CanaryRolledBack" in events and "CanaryPromoted" in events
    # a rejected version is not retried under `latest`
    register(cluster, namespace, 1, 2, 3)
    time.sleep(4)  # two analysis intervals
    assert predictors(cluster, namespace) == [("stable", "v2", 100)]

    # v4's pods never come up: Seldon says Failed, and the canary goes back to stable
    register(cluster, namespace, 1, 2, 3, 4)
    wait_predictors(cluster, namespace, [("stable", "v2", 90), ("canary", "v4", 10)],
                    host=seldon_host)
    assert "canary" in seldon_host.missing
    mark_failed(cluster, namespace)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)], host=seldon_host)
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


@pytest.mark.parametrize("namespace_label", ["kubernetes_namespace"])  # Seldon's analytics
def test_a_restarted_executor_does_not_hide_the_canarys_errors(
        cluster: Cluster, namespace: str, namespace_label: str, seldon_crd: None,
        prometheus: Prometheus, seldon_host: SeldonHost, request_bodies: list[bytes],
        operator: None) -> None:
    """v3 errs on half its requests; its executor restarts mid-step and counts from zero.
    Only ``increase()`` across the reset sees enough errors to fail the step: the
    restarted process alone saw too few requests for any verdict (2 of 4 failed), and so
    did the window before the restart. The scrape here names the namespace label
    ``kubernetes_namespace``, and the operator is configured for it."""
    setup_objects(cluster, namespace, interval="10s")  # one analysis after both halves
    wait_predictors(cluster, namespace, [("stable", "v1", 100)], host=seldon_host)
    mark_available(cluster, namespace)
    register(cluster, namespace, 1, 3)
    wait_for(lambda: predictors(cluster, namespace) == [("stable", "v1", 90),
                                                        ("canary", "v3", 10)],
             timeout=30, what="the canary predictor")
    seldon_host.sync(cluster.get("sdep", "classifier", namespace))
    canary = seldon_host.procs["canary"]
    errors_across_a_reset(  # the executor process starts again: its counters at zero
        cluster, namespace, prometheus, seldon_host,
        model_url=f"http://{canary.model.address}/predict", executor_url=canary.url,
        bodies=request_bodies, restart=lambda: seldon_host.restart_executor("canary"),
        step_s=10)
    assert all(f'{namespace_label}="{namespace}"' in q for q in operator_queries(prometheus))


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: Prometheus,
        seldon_host: SeldonHost, ingress: Ingress, operator_env: dict[str, str],
        tmp_path: Path) -> None:
    env = {**operator_env, "TRELLIS_PROMETHEUS_URL": prometheus.url}
    first = OperatorProcess(env, tmp_path / "op1.log", ["-n", namespace]).start()
    try:
        setup_objects(cluster, namespace)
        wait_predictors(cluster, namespace, [("stable", "v1", 100)], timeout=60,
                        host=seldon_host)
        mark_available(cluster, namespace)
        # no gateway configured: Seldon's own address, as is (it bypasses the split)
        wait_for(lambda: mdep_status(cluster, namespace).get("endpoint") == address(namespace),
                 timeout=30, what="the predictor's address as the endpoint")
        ingress.start()
        register(cluster, namespace, 1, 2)
        wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)],
                        host=seldon_host)
        wait_for(lambda: predictors(cluster, namespace) == [("stable", "v1", 50),
                                                            ("canary", "v2", 50)],
                 timeout=60, what="the 50% step")
        ingress.pause()  # the town sleeps: the 50% step's window stays (almost) empty
        wait_predictors(cluster, namespace, [("stable", "v1", 50), ("canary", "v2", 50)],
                        host=seldon_host)
        first.kill()
    finally:
        first.stop()
    step_before = mdep_status(cluster, namespace)["canary"]
    restarted = time.time()
    second = OperatorProcess(env, tmp_path / "op2.log", ["-n", namespace]).start()
    try:
        # too few requests: the restarted operator analyses the step, finds it
        # inconclusive and holds it, neither resetting to 10% nor jumping to 100%
        def held():
            canary = mdep_status(cluster, namespace).get("canary") or {}
            return any(a["verdict"] == "inconclusive" and a["weight"] == 50
                       and _epoch(a["at"]) >= int(restarted)
                       for a in canary.get("analyses", []))
        wait_for(held, timeout=30, what="an inconclusive analysis after the restart")
        assert predictors(cluster, namespace) == [("stable", "v1", 50), ("canary", "v2", 50)]
        canary = mdep_status(cluster, namespace)["canary"]
        kept = ("step", "weight", "startedAt", "baseline")  # the window runs on
        assert {k: canary[k] for k in kept} == {k: step_before[k] for k in kept}
        ingress.resume()
        wait_predictors(cluster, namespace, [("stable", "v1", 0), ("canary", "v2", 100)],
                        timeout=60, host=seldon_host)
        wait_predictors(cluster, namespace, [("stable", "v2", 100)], timeout=60,
                        host=seldon_host)
    finally:
        second.stop()
    analyses = mdep_status(cluster, namespace)["rollouts"][-1]["analyses"]
    assert [a["weight"] for a in passes(analyses)] == [10, 50, 100]


def _epoch(iso: str) -> float:
    from controller.conditions import parse_time

    when = parse_time(iso)
    assert when is not None
    return when.timestamp()
