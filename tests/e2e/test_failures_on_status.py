"""Every failure class as a user reads it: the condition, the Event, the metric.

Against the real API server, with the operator in-process for the test's namespace and
seldon-backend deployments (no Seldon Core runs: ``tests.support.seldon`` plays it). Each
test breaks one thing the operator depends on, checks what ``kubectl describe`` shows,
then mends it and checks that the operator recovers by itself. Git unreachable is the
SpecRepository's own FetchFailed path: ``test_specrepo_sync.py::
test_unreachable_remote_then_recovery``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.processes import free_port
from tests.support.clusterwide import scrape
from tests.support.kube import Cluster, condition, wait_for
from tests.support.prometheus import Prometheus
from tests.support.seldon import (
    address,
    install_crd,
    mark_available,
    mdep_status,
    post_event,
    predictors,
    register,
    setup_objects,
    wait_predictors,
)
from tests.support.seldon_host import Ingress, SeldonHost

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture
def metrics_port(operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The in-process operator's /metrics on a port the test knows (instead of any)."""
    port = free_port()
    monkeypatch.setenv("TRELLIS_METRICS_PORT", str(port))
    return port


@pytest.fixture
def logger_port(operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The receiver for Seldon's request logger on a port the test knows."""
    port = free_port()
    monkeypatch.setenv("TRELLIS_REQUEST_LOGGER_PORT", str(port))
    return port


@pytest.fixture
def seldon(cluster: Cluster, metrics_port: int, request: pytest.FixtureRequest) -> None:
    """The SeldonDeployment CRD, then the operator (started once its env is set)."""
    install_crd(cluster)
    request.getfixturevalue("operator")


@pytest.fixture
def seldon_with_metrics(prometheus: Prometheus, seldon_host: SeldonHost,
                        request: pytest.FixtureRequest) -> None:
    """``seldon`` with a real Prometheus and what the predictors' pods would run."""
    request.getfixturevalue("seldon")


def failed_with(cluster: Cluster, ns: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get("mdep", "classifier", ns)
        ready = condition(obj, "Ready")
        return obj if ready and (ready["status"], ready["reason"]) == ("False", reason) else None
    return wait_for(check, timeout=timeout, what=f"Ready=False {reason}")


def events_for(cluster: Cluster, ns: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [e for e in items if e["reason"] == reason
            and e["involvedObject"]["name"] == "classifier"]


def described(cluster: Cluster, ns: str) -> str:
    return cluster.kubectl("describe", "mdep", "classifier", "-n", ns).stdout


def errors_counted(port: int, reason: str) -> float:
    return scrape(port).get(
        f'trellis_reconcile_errors_total{{kind="ModelDeployment",reason="{reason}"}}', 0)


def test_prometheus_unreachable_during_canary_analysis_holds_the_step(
        cluster: Cluster, namespace: str, seldon_with_metrics: None, prometheus: Prometheus,
        seldon_host: SeldonHost, ingress: Ingress, metrics_port: int) -> None:
    setup_objects(cluster, namespace)
    wait_predictors(cluster, namespace, [("stable", "v1", 100)], host=seldon_host)
    mark_available(cluster, namespace)
    ingress.start()
    register(cluster, namespace, 1, 2)
    wait_predictors(cluster, namespace, [("stable", "v1", 90), ("canary", "v2", 10)],
                    host=seldon_host)
    step = mdep_status(cluster, namespace)["canary"]

    prometheus.stop()  # Prometheus goes down while the 10% step is analysed
    obj = failed_with(cluster, namespace, "MetricsUnavailable")
    ready = condition(obj, "Ready")
    assert ready["message"] == (
        f"canary analysis of v2 at 10% is on hold: Prometheus at {prometheus.url} cannot be "
        f"queried: Cannot connect to host 127.0.0.1:{prometheus.port} ssl:default "
        f"[Connect call failed ('127.0.0.1', {prometheus.port})]")
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Stalled") is None  # transient: retried with backoff
    time.sleep(8)  # retries meanwhile: the step holds, nothing is re-written or re-announced
    assert predictors(cluster, namespace) == [("stable", "v1", 90), ("canary", "v2", 10)]
    held = cluster.get("mdep", "classifier", namespace)
    assert held["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert held["status"]["canary"] == step
    [event] = events_for(cluster, namespace, "MetricsUnavailable")
    assert event["type"] == "Warning" and event["message"] == ready["message"]
    text = described(cluster, namespace)
    assert text.count("MetricsUnavailable") >= 2  # the condition and the Event
    assert errors_counted(metrics_port, "MetricsUnavailable") >= 2

    prometheus.start()  # back, same port and data: Ready returns without anyone's help
    wait_predictors(cluster, namespace, [("stable", "v1", 50), ("canary", "v2", 50)],
                    timeout=60, host=seldon_host)
    ready = condition(cluster.get("mdep", "classifier", namespace), "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    # decided on the samples from before and after the outage (the gap is in Prometheus,
    # not in the counters)
    passed = [a for a in mdep_status(cluster, namespace)["canary"]["analyses"]
              if a["verdict"] == "pass"]
    assert passed and passed[0]["weight"] == 10


def reference(path: Path) -> None:
    """A drift reference as training writes it (docs/contracts.md)."""
    samples = [[float(i % 7), float(i % 5)] for i in range(50)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"feature_names": ["hue", "weight"], "samples": samples}))


def test_unreadable_model_reference_stalls_but_keeps_serving(
        cluster: Cluster, namespace: str, seldon: None, tmp_path: Path) -> None:
    ref = tmp_path / "models" / "classifier" / "1" / "reference.json"
    setup_objects(cluster, namespace, reference_uri=ref.as_uri(),
                  drift={"enabled": True, "action": "alert"})
    wait_predictors(cluster, namespace, [("stable", "v1", 100)])
    mark_available(cluster, namespace)
    obj = failed_with(cluster, namespace, "ModelUnreadable")
    obj = wait_for(lambda: (o := cluster.get("mdep", "classifier", namespace))["status"].get(
        "phase") == "Serving" and o, timeout=30, what="Available seen by the operator")
    ready, stalled = condition(obj, "Ready"), condition(obj, "Stalled")
    assert ready["message"] == (
        f"the drift reference of model v1 ({ref.as_uri()}) cannot be read: no such file")
    assert (stalled["status"], stalled["reason"]) == ("True", "ModelUnreadable")
    assert stalled["message"] == ready["message"]
    st = obj["status"]  # the rollout's own progress is on status all the same
    assert st["stableVersion"] == "v1" and st["endpoint"] == address(namespace)
    time.sleep(6)  # a retry (permanent: about one resync): no new write, no new Event
    assert cluster.get("mdep", "classifier", namespace)["metadata"]["resourceVersion"] == \
        obj["metadata"]["resourceVersion"]
    [event] = events_for(cluster, namespace, "ModelUnreadable")  # one, for Ready and Stalled
    assert event["type"] == "Warning"

    reference(ref)  # the file is repaired: the next retry reads it
    def serving() -> dict[str, Any] | None:
        obj = cluster.get("mdep", "classifier", namespace)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "Serving" else None
    obj = wait_for(serving, timeout=30, what="Ready=True Serving again")
    assert condition(obj, "Stalled") is None


POLICY = "farm-model-images"


@pytest.fixture
def image_policy(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A cluster admission policy, as a platform team would set one: model servers come
    from the farm's registry. Bound to this test's namespace only."""
    name = f"{POLICY}-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["machinelearning.seldon.io"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["seldondeployments"]}]},
            "validations": [{
                "expression": "object.spec.predictors.all(p, p.componentSpecs.all(c, "
                              "c.spec.containers.all(k, "
                              "k.image.startsWith('registry.farm.example/'))))",
                "message": "model server images must come from registry.farm.example/"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}},
    }
    cluster.apply([policy, binding])
    probe = {"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
             "metadata": {"name": "probe", "namespace": namespace},
             "spec": {"predictors": [{"componentSpecs": [{"spec": {"containers": [
                 {"name": "m", "image": "elsewhere/m"}]}}]}]}}

    def enforced() -> bool:  # policies take effect a moment after they are created
        return cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe),
                               check=False).returncode != 0
    wait_for(enforced, timeout=30, what="the admission policy enforced")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                        name, "--ignore-not-found", check=False)


def test_the_api_server_rejecting_what_the_operator_renders_is_stalled(
        cluster: Cluster, namespace: str, seldon: None, image_policy: str,
        metrics_port: int) -> None:
    setup_objects(cluster, namespace)
    obj = failed_with(cluster, namespace, "Rejected")
    ready, stalled = condition(obj, "Ready"), condition(obj, "Stalled")
    path = f"/apis/machinelearning.seldon.io/v1/namespaces/{namespace}/seldondeployments/" \
           "classifier"
    assert ready["message"] == (
        f'seldondeployments.machinelearning.seldon.io "classifier" is forbidden: '
        f"ValidatingAdmissionPolicy '{image_policy}' with binding '{image_policy}' denied "
        f"request: model server images must come from registry.farm.example/ "
        f"(422 on PATCH {path})")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == (
        "True", "Rejected", ready["message"])
    assert cluster.get("sdep", "classifier", namespace) is None
    assert "Rejected" in described(cluster, namespace)
    assert len(events_for(cluster, namespace, "Rejected")) == 1
    assert errors_counted(metrics_port, "Rejected") >= 1

    # The platform team lifts the policy: the slow retry (no spec change) goes through.
    cluster.kubectl("delete", "validatingadmissionpolicybinding", image_policy)
    wait_predictors(cluster, namespace, [("stable", "v1", 100)], timeout=30)
    obj = failed_with(cluster, namespace, "Deploying")  # waiting for Seldon, as usual
    assert condition(obj, "Stalled") is None


def log_event(port: int, path: str, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> int:
    """POST to the receiver as Seldon's executor does; the HTTP status it answered."""
    return post_event(f"http://127.0.0.1:{port}{path}", body, headers)


def logged_prediction(port: int, ns: str, puid: str) -> list[int]:
    """One prediction of 8 images as Seldon's request logger reports it, then its labels."""
    hdrs = {"Ce-Requestid": puid, "Ce-Namespace": ns, "Ce-Modelid": "classifier",
            "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "stable",
            "Ce-Specversion": "1.0"}
    images = [[[[0.5] * 3] * 64] * 64] * 8
    answer = {"data": {"names": ["bad", "good"], "ndarray": [[0.2, 0.8]] * 8},
              "meta": {"tags": {"trellis.features": [[1.0, 2.0]] * 8, "trellis.version": 1}}}
    return [log_event(port, "/", {"data": {"ndarray": images}},
                      {**hdrs, "Ce-Type": "io.seldon.serving.inference.request"}),
            log_event(port, "/", answer,
                      {**hdrs, "Ce-Type": "io.seldon.serving.inference.response"}),
            log_event(port, f"/feedback/{ns}/classifier", {"puid": puid, "labels": [1] * 8})]


def test_a_full_request_log_stops_logging_not_seldons_logger(
        cluster: Cluster, namespace: str, logger_port: int, seldon: None, metrics_port: int,
        tmp_path: Path) -> None:
    """Cluster mode: at its byte bound the log drops what Seldon's request logger sends,
    acknowledges it all the same, counts it, and says so on the ModelDeployment."""
    ref = tmp_path / "models" / "classifier" / "1" / "reference.json"
    reference(ref)
    setup_objects(cluster, namespace, reference_uri=ref.as_uri(), drift={
        "enabled": True, "action": "alert", "storage": {"maxBytes": 1048576}})  # ~80 images
    wait_predictors(cluster, namespace, [("stable", "v1", 100)])
    mark_available(cluster, namespace)
    on = wait_for(lambda: condition(cluster.get("mdep", "classifier", namespace),
                                    "RequestLogging"), timeout=30, what="RequestLogging")
    assert (on["status"], on["reason"]) == ("True", "Logging")
    dropped_key = (f'trellis_request_log_dropped_total{{deployment="classifier",'
                   f'kind="request",namespace="{namespace}"}}')
    for i in range(30):  # labelled batches: nothing unlabelled is left to make room
        codes = logged_prediction(logger_port, namespace, f"p{i}")
        assert all(200 <= code < 300 for code in codes), codes  # never a failure to Seldon
    # Acknowledged into the inbox; the operator's next pass logs them, dropping some.
    wait_for(lambda: scrape(metrics_port).get(dropped_key, 0.0) >= 2, timeout=30,
             what="requests dropped by the full log")
    full = wait_for(lambda: (c := condition(cluster.get("mdep", "classifier", namespace),
                                            "RequestLogging")) and c["status"] == "False" and c,
                    timeout=30, what="RequestLogging False")
    assert full["reason"] == "LogFull" and "predictions are still served" in full["message"]
    assert "since the active operator replica started" in full["message"]
    assert condition(cluster.get("mdep", "classifier", namespace), "Ready")["status"] == "True"

    cluster.kubectl("patch", "mdep", "classifier", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"drift": {"storage": {"maxBytes": 8388608}}}}))
    more = iter(range(100))
    def resumed() -> dict[str, Any] | None:  # the new bound reaches the log, then a record fits
        codes = logged_prediction(logger_port, namespace, f"more{next(more)}")
        assert all(200 <= code < 300 for code in codes), codes
        cond = condition(cluster.get("mdep", "classifier", namespace), "RequestLogging")
        return cond if cond["status"] == "True" else None
    back = wait_for(resumed, timeout=30, interval=1.0, what="RequestLogging True again")
    assert back["reason"] == "Logging"
