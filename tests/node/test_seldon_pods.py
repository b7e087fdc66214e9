"""Canary analysis against model servers running as pods on the dev cluster's node.

No Seldon Core operator runs here, so the test plays its part: it writes the
SeldonDeployment's status as Seldon 1.17.1 does (``tests.support.seldon``) and creates
what Seldon's operator would for each predictor (``tests.support.seldon_pods``): a
Deployment whose pod downloads its model version from the dev cluster's S3 server, runs
it in the model-server image, with the executor's metrics stand-in beside it (Seldon's
executor cannot be built here; the stand-in counts the requests that pod answered, in the
executor's series), and a Service. The dev cluster's Prometheus (``dev-cluster up
--prometheus``) finds the pods through the API server as Seldon's PodMonitor would
select them and scrapes them every second; the operator's canary analysis queries it
with real PromQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from controller.devcluster import deploy
from controller.devcluster.cluster import DevCluster
from tests.support.kube import Cluster, condition, wait_for
from tests.support.prometheus import Prometheus
from tests.support.seldon import (
    EXECUTOR_COUNT,
    errors_across_a_reset,
    install_crd,
    mark_available,
    mdep_status,
    passes,
    predictors,
    register,
    rejected_at_first_step,
    setup_objects,
    wait_predictors,
)
from tests.support.seldon_host import Ingress
from tests.support.seldon_pods import SeldonPods, s3_client

pytestmark = pytest.mark.node

MODELS = "canary-models/classifier"  # in the dev cluster's bucket, one prefix per version
# A step's window holds ~20 requests, so its p99 is its slowest: on a two-core node that
# also imports images and runs the control plane, one request stalled past 500 ms would
# roll a good version back. The latency verdict has its own tests (tests/unit/test_canary.py,
# tests/e2e/test_seldon_rollout.py); these are about the pods' error series.
MAX_LATENCY_MS = 5000


@pytest.fixture(scope="module")
def models_uri(node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """v1 and v2 good, v3 failing about half its inputs (its server answers 500), in S3 as
    training leaves them."""
    from tests.support.fake_model import write_model_version

    root = tmp_path_factory.mktemp("canary-models")
    s3 = s3_client(node_cluster, "trellis-system")
    for version, kwargs in ((1, {}), (2, {"seed": 1}), (3, {"fail_fraction": 0.5})):
        directory = write_model_version(root / str(version), **kwargs)
        for path in directory.iterdir():
            s3.upload_file(str(path), "trellis", f"{MODELS}/{version}/{path.name}")
    return f"s3://trellis/{MODELS}"


@pytest.fixture(scope="module")
def operator_kubeconfig(node_operator_kubeconfig: str, node_cluster: Cluster) -> str:
    """The operator under test is the manifests' ServiceAccount on the node's cluster."""
    install_crd(node_cluster)
    return node_operator_kubeconfig


@pytest.fixture
def namespace(node_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A team namespace (its S3 Secret is what the storage initializer reads)."""
    ns = f"canary-pods-{uuid.uuid4().hex[:5]}"
    deploy.team_namespace(node_cluster.dev, ns)
    yield ns
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture
def prometheus(node_dev_cluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> Prometheus:
    """The cluster's own, read by the operator as its configuration says (the namespace in
    ``namespace``, a PodMonitor's label). Shared by the session: each test filters on its
    namespace."""
    prom = Prometheus(node_dev_cluster.prometheus.root, namespace_label="namespace")
    assert prom.running(), "the node cluster runs without its Prometheus"
    assert f"export TRELLIS_PROMETHEUS_URL={prom.url}" in node_dev_cluster.env_lines()
    monkeypatch.setenv("TRELLIS_PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("TRELLIS_PROMETHEUS_NAMESPACE_LABEL", prom.namespace_label)
    return prom


@pytest.fixture
def seldon_pods(node_cluster: Cluster, namespace: str, ingress: Ingress
                ) -> Iterator[SeldonPods]:
    pods = SeldonPods(node_cluster, namespace, ingress=ingress)
    try:
        yield pods
    finally:
        pods.close()


def _ready(cluster: Cluster, ns: str) -> tuple[str, str]:
    cond = condition(cluster.get("mdep", "classifier", ns), "Ready") or {}
    return cond.get("status", ""), cond.get("reason", "")


def test_a_canary_on_model_server_pods_is_promoted_or_rolled_back_by_real_promql(
        node_cluster: Cluster, namespace: str, models_uri: str, prometheus: Prometheus,
        seldon_pods: SeldonPods, ingress: Ingress, operator: None) -> None:
    ns = namespace
    started = time.time()
    setup_objects(node_cluster, ns, models_uri=models_uri,
                  max_latency_ms=MAX_LATENCY_MS)
    wait_predictors(node_cluster, ns, [("stable", "v1", 100)], host=seldon_pods)
    mark_available(node_cluster, ns)
    wait_for(lambda: _ready(node_cluster, ns) == ("True", "Serving"), timeout=60,
             what="Serving v1")
    [pod] = seldon_pods.pods("classifier", "stable")
    assert pod["spec"]["initContainers"][0]["args"][0] == f"{models_uri}/1"
    ingress.start()

    register(node_cluster, ns, 1, 2, models_uri=models_uri)  # a good v2: the canary starts
    steps = [[("stable", "v1", 90), ("canary", "v2", 10)],
             [("stable", "v1", 50), ("canary", "v2", 50)],
             [("stable", "v1", 0), ("canary", "v2", 100)]]
    for expected in steps:
        wait_predictors(node_cluster, ns, expected, timeout=120, host=seldon_pods)
    wait_predictors(node_cluster, ns, [("stable", "v2", 100)], timeout=120, host=seldon_pods)
    st = mdep_status(node_cluster, ns)
    assert st["stableVersion"] == "v2" and st["rollouts"][-1]["outcome"] == "promoted", st
    passed = passes(st["rollouts"][-1]["analyses"])
    assert [a["weight"] for a in passed] == [10, 50, 100], passed
    assert all(a["errorRate"] == 0 and a["requests"] >= 10 for a in passed), passed
    # what was decided on came from the pods' own series, found by discovery and
    # labelled by the PodMonitor's relabelling (namespace, pod, container, port name).
    # The canary's pod is gone once promoted, so an instant query sees its series as
    # stale: look back over the test instead (a range skips the staleness markers).
    lookback = int(time.time() - started) + 60
    scraped = prometheus.query(
        f'last_over_time({EXECUTOR_COUNT}{{namespace="{ns}",predictor_name="canary",'
        f'predictor_version="v2",service="predictions"}}[{lookback}s])')
    assert scraped and all(r["metric"]["pod"].startswith("classifier-canary-") and
                           r["metric"]["container"] == "seldon-container-engine" and
                           r["metric"]["endpoint"] == "metrics" for r in scraped), scraped
    # the operator's queries while this test ran (the test's own name no deployment)
    queries = [q for q in prometheus.queries(since=started)
               if "seldon_api_executor" in q and "deployment_name=" in q]
    assert queries and all("increase(" in q and 'service="predictions"' in q and
                           f'namespace="{ns}"' in q for q in queries), queries

    register(node_cluster, ns, 1, 2, 3, models_uri=models_uri)  # v3 fails half its inputs
    wait_predictors(node_cluster, ns, [("stable", "v2", 90), ("canary", "v3", 10)],
                    timeout=120, host=seldon_pods)
    wait_for(lambda: predictors(node_cluster, ns) == [("stable", "v2", 100)], timeout=120,
             what="v3 rolled back")
    st, errors, requests = rejected_at_first_step(node_cluster, ns, 3)
    assert errors >= 3 and errors / requests >= 0.2, st["rejectedVersions"][-1]
    assert st["rollouts"][-1]["outcome"] == "rolledBack"
    assert not passes(st["rollouts"][-1]["analyses"])
    seldon_pods.sync(node_cluster.get("sdep", "classifier", ns))  # Seldon removes the canary
    assert {p["metadata"]["labels"]["version"]
            for p in seldon_pods.pods("classifier")} == {"v2"}


def test_a_crashed_executor_container_does_not_hide_the_canarys_errors(
        node_cluster: Cluster, namespace: str, models_uri: str, prometheus: Prometheus,
        seldon_pods: SeldonPods, request_bodies: list[bytes], operator: None) -> None:
    """v3 errs on half its requests; mid-step its pod's executor container is killed and
    the kubelet restarts it in the same pod, counting from zero. Only ``increase()``
    across the reset sees enough errors to fail the step: the restarted container alone
    saw too few requests for any verdict, and so did the window before the crash."""
    ns = namespace
    setup_objects(node_cluster, ns, models_uri=models_uri,
                  max_latency_ms=MAX_LATENCY_MS, interval="30s")
    wait_predictors(node_cluster, ns, [("stable", "v1", 100)], host=seldon_pods)
    mark_available(node_cluster, ns)
    register(node_cluster, ns, 1, 3, models_uri=models_uri)
    wait_for(lambda: predictors(node_cluster, ns) == [("stable", "v1", 90),
                                                      ("canary", "v3", 10)],
             timeout=30, what="the canary predictor")
    seldon_pods.sync(node_cluster.get("sdep", "classifier", ns))
    [pod] = seldon_pods.pods("classifier", "canary")
    ip = pod["status"]["podIP"]

    def crash() -> None:
        restarted = seldon_pods.crash_engine("classifier", "canary")
        assert restarted["status"]["podIP"] == ip  # the same pod, so the same series

    errors_across_a_reset(node_cluster, ns, prometheus, seldon_pods,
                          model_url=f"http://{ip}:9000/predict",
                          executor_url=f"http://{ip}:8000", bodies=request_bodies,
                          restart=crash, step_s=30)
