"""A training Job whose pods cannot get anywhere says why, in Kubernetes' words, on the
Experiment — measured with real pods on the node: an image that cannot be pulled, a
GPU no node has, a container that crash-loops, and a pod Pod Security admission refuses
(the Job controller's FailedCreate Event: no pod to read).

Image pulls go to ``localhost:1`` (refused at once): no test traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from controller import api
from controller.kube import Kube
from controller.settings import Settings
from controller.training.kubernetes import KubernetesTrainingBackend
from tests.support.kube import Cluster, condition, wait_for
from tests.support.specs import example, mutate
from tests.support.testimages import BUSYBOX_IMAGE

pytestmark = pytest.mark.node

MISSING_IMAGE = "localhost:1/trellis-test/missing:0"


def _job(name: str, container: dict, restart: str = "Never", backoff: int = 0) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff, "template": {"spec": {
                "restartPolicy": restart,
                "containers": [{"name": "flow", "command": ["sh", "-c", "exit 3"]}
                               | container]}}}}


CASES = {
    "image": (_job("no-image", {"image": MISSING_IMAGE}),
              {"ErrImagePull", "ImagePullBackOff"}, MISSING_IMAGE),
    "gpu": (_job("wants-gpu", {"image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                               "resources": {"limits": {"nvidia.com/gpu": 1}}}),
            {"Unschedulable"}, "Insufficient nvidia.com/gpu"),
    "crash": (_job("crashes", {"image": BUSYBOX_IMAGE, "imagePullPolicy": "Never"},
                   restart="OnFailure", backoff=6),
              {"CrashLoopBackOff"}, "exit code 3"),
    # in a namespace enforcing the restricted profile: the pod is never created
    "podsecurity": (_job("refused", {"image": BUSYBOX_IMAGE, "imagePullPolicy": "Never"}),
                    {"FailedCreate"}, 'violates PodSecurity "restricted:latest"'),
}
ENFORCE_RESTRICTED = {"podsecurity"}


@pytest.fixture
def kube(node_cluster: Cluster) -> Iterator[Kube]:
    client = Kube.from_env(node_cluster.kubeconfig)
    yield client
    asyncio.run(client.close())


@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_names_why_a_jobs_pods_are_stuck(node_cluster: Cluster, kube: Kube,
                                                 case: str) -> None:
    job, reasons, words = CASES[case]
    ns = node_cluster.create_namespace(f"stuck-{case}")
    if case in ENFORCE_RESTRICTED:
        node_cluster.kubectl("label", "namespace", ns,
                             "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: node_cluster.get("serviceaccount", "default", ns), what="default SA")
    node_cluster.apply(job, ns)
    backend = KubernetesTrainingBackend(kube, Settings())

    def stuck():
        seen = asyncio.run(backend.observe(ns, job["metadata"]["name"]))
        assert seen.state == "running"
        return seen.blocked

    found = wait_for(stuck, timeout=90, interval=1, what=f"{case} diagnosis")
    assert found.reason in reasons, found
    assert words in found.message, found
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture
def node_operator(node_operator_kubeconfig: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
                  node_cluster: Cluster) -> Iterator[str]:
    import kopf
    from kopf.testing import KopfRunner

    from controller import localwork

    ns = node_cluster.create_namespace("stuck-experiment")
    env = {"KUBECONFIG": node_operator_kubeconfig, "TRELLIS_STATE_DIR": str(tmp_path),
           "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_METRICS_PORT": "0",
           "TRELLIS_REQUEST_LOGGER_PORT": "-1", "TRELLIS_WEBHOOK_PORT": "0",
           "TRELLIS_LOG_FORMAT": "text", "TRELLIS_TRAINER_IMAGE": MISSING_IMAGE}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    try:
        with KopfRunner(["run", "--standalone", "-n", ns, "-m", "controller.handlers"],
                        timeout=60, settings=settings) as runner:
            yield ns
        assert runner.exception is None, runner.exception
    finally:
        localwork.stop(tmp_path)
        node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_experiment_condition_says_its_trainer_image_cannot_be_pulled(
        node_cluster: Cluster, node_operator: str) -> None:
    ns = node_operator
    # What the Job needs besides its image, so the image is the one thing wrong.
    node_cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trellis-trainer"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trellis-s3"},
         "stringData": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}},
    ], ns)
    exp = mutate(example("Experiment"), "spec.backend", "kubernetes")
    node_cluster.apply(exp, ns)

    def blocked():
        ready = condition(node_cluster.get("experiment", "classifier", ns), api.Cond.READY)
        return ready if ready and ready["reason"] in ("ErrImagePull", "ImagePullBackOff") \
            else None

    ready = wait_for(blocked, timeout=120, interval=1, what="Ready=False ImagePullBackOff")
    assert ready["status"] == "False" and MISSING_IMAGE in ready["message"], ready
    described = node_cluster.kubectl("describe", "experiment", "classifier", "-n", ns).stdout
    assert ready["reason"] in described
    # The phase stays Running: a pull can still succeed once the image is there.
    exp_now = node_cluster.get("experiment", "classifier", ns)
    assert exp_now["status"]["phase"] == api.Phase.RUNNING, json.dumps(exp_now["status"])
