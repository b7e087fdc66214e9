"""Seldon mode: the SeldonDeployment on the API server at every step of a rollout.

No Seldon Core operator runs here, so the test plays its two roles that the rollout
depends on: it marks the SeldonDeployment Available, and it records the executor
metrics (served by a Prometheus stand-in that answers the operator's real queries).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_prometheus import FakePrometheus
from tests.support.kube import Cluster, OperatorProcess, condition, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
CRD = Path(__file__).resolve().parents[1] / "support" / "crds" / "seldondeployment.yaml"


@pytest.fixture
def prometheus(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePrometheus]:
    prom = FakePrometheus().start()
    monkeypatch.setenv("TRELLIS_PROMETHEUS_URL", prom.url)
    yield prom
    prom.stop()


@pytest.fixture
def seldon_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(CRD))


def register(cluster: Cluster, ns: str, *versions: int) -> None:
    models = [{"version": v, "artifactUri": f"s3://farm-models/classifier/{v}",
               "run": f"PumpkinFlow/{v}", "createdAt": "2026-11-27T00:00:00Z"}
              for v in versions]
    cluster.kubectl("patch", "exp", "classifier", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"models": models}}))


def setup_objects(cluster: Cluster, ns: str) -> None:
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"  # nothing trains in this test
    cluster.apply(exp, ns)
    register(cluster, ns, 1)
    mdep = base("ModelDeployment")
    mdep["spec"]["backend"] = "seldon"
    mdep["spec"]["canary"] = {"steps": [10, 50, 100], "interval": "2s",
                              "analysis": {"minRequests": 10, "maxErrorRate": 0.05,
                                           "maxLatencyP99Ms": 500, "maxPredictionShift": 0.3}}
    mdep["spec"]["drift"] = {"enabled": False}
    cluster.apply(mdep, ns)


def predictors(cluster: Cluster, ns: str) -> list[tuple[str, str, int]]:
    sdep = cluster.get("sdep", "classifier", ns)
    if not sdep:
        return []
    return [(p["name"], p["labels"]["version"], p["traffic"]) for p in sdep["spec"]["predictors"]]


def mark_available(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("patch", "sdep", "classifier", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {
                        "state": "Available",
                        "address": {"url": f"http://seldon.farm/seldon/{ns}/classifier"}}}))


def wait_predictors(cluster: Cluster, ns: str, expected: list[tuple[str, str, int]],
                    timeout: float = 30) -> None:
    """Wait for the SeldonDeployment's traffic split and, mid-rollout, for the step to be
    on status with its counters baseline: traffic recorded before the operator has read
    the baseline would fall outside the step's window, as requests do in a real cluster
    in the moment between a weight change and the baseline read.
    """
    wait_for(lambda: predictors(cluster, ns) == expected, timeout=timeout,
             what=f"predictors {expected}")
    weights = dict((name, weight) for name, _, weight in expected)
    if "canary" in weights:
        def step_recorded() -> bool:
            canary = mdep_status(cluster, ns).get("canary") or {}
            return canary.get("weight") == weights["canary"] and bool(canary.get("baseline"))
        wait_for(step_recorded, timeout=timeout, what=f"canary step at {weights['canary']}%")


def mdep_status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return (cluster.get("mdep", "classifier", ns) or {}).get("status") or {}


def traffic(prom: FakePrometheus, canary: int, stable: int, *, errors: int = 0,
            canary_latency: float = 0.02) -> None:
    prom.record("canary", canary, ok=20, errors=errors, latency_s=canary_latency)
    prom.record("stable", stable, ok=80)


def test_rollout_and_rollback_drive_the_seldondeployment(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: FakePrometheus,
        operator: None) -> None:
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
    assert mdep_status(cluster, namespace)["endpoint"] == (
        f"http://seldon.farm/seldon/{namespace}/classifier/api/v1.0/predictions")

    register(cluster, namespace, 1, 2)  # a better v2 arrives: canary starts by itself
    wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)])
    for stable_w, canary_w in ((50, 50), (0, 100)):
        traffic(prometheus, 2, 1)
        wait_predictors(cluster, namespace, [("stable", "v1", stable_w),
                                             ("canary", "v2", canary_w)])
    traffic(prometheus, 2, 1)
    wait_predictors(cluster, namespace, [("stable", "v2", 100)])
    st = mdep_status(cluster, namespace)
    assert st["stableVersion"] == "v2" and "canary" not in st
    assert st["rollouts"][-1]["outcome"] == "promoted"
    assert [a["weight"] for a in st["rollouts"][-1]["analyses"]] == [10, 50, 100]

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


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
        cluster: Cluster, namespace: str, seldon_crd: None, prometheus: FakePrometheus,
        operator_env: dict[str, str], tmp_path: Path) -> None:
    env = {**operator_env, "TRELLIS_PROMETHEUS_URL": prometheus.url}
    first = OperatorProcess(env, tmp_path / "op1.log", ["-n", namespace]).start()
    try:
        setup_objects(cluster, namespace)
        wait_predictors(cluster, namespace, [("stable", "v1", 100)], timeout=60)
        mark_available(cluster, namespace)
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
