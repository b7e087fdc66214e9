"""The operator runs as the manifests deploy it: the controller image built here from the
Dockerfile, two replicas peering as ``trellis``, the manifests' ServiceAccount and RBAC
only, the in-cluster API address from the `kubernetes` Service. One replica acts, the
other stands by; the active one serves metrics and reconciles.

Experiments train as users' do in a cluster: a Job whose one pod, from the trainer image,
runs the whole flow against the dev cluster's real S3 server (SeaweedFS). The trainer's
CUDA-sized environment is mounted from the host (``TRELLIS_TRAINER_HOST_MOUNTS``,
``controller/devcluster/images.py``); ``tests/integration/test_trainer_pod_security.py``
has the API server judge the same pod under the restricted profile.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller import api
from controller.devcluster import deploy, images
from controller.paths import FLOWS_DIR, ROOT
from tests.support.clusterwide import SELDON_CRD, pick, render
from tests.support.kube import Cluster, condition, wait_for
from tests.support.seldon import (
    mark_available,
    mdep_status,
    post_event,
    predictors,
    setup_objects,
    wait_predictors,
)
from tests.support.seldon_pods import s3_client
from tests.support.specs import example

pytestmark = pytest.mark.node

SYSTEM_NS = "trellis-system"


@pytest.fixture(scope="module")
def operator_pods(node_cluster: Cluster) -> list[dict]:
    node = node_cluster.dev.node.state()
    assert node is not None
    built = images.ensure_images(Path(node.containerd_socket), names=("controller", "trainer"))
    docs = render(node_cluster)
    config = pick(docs, "ConfigMap", "trellis-operator-config")[0]
    config["data"]["TRELLIS_TRAINER_HOST_MOUNTS"] = json.dumps(built["trainer"].mounts)
    crds = pick(docs, "CustomResourceDefinition")
    crds.append(yaml.safe_load(SELDON_CRD.read_text()))  # ModelDeployments' backend: seldon
    node_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                         input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    node_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{c['metadata']['name']}" for c in crds])
    # The peering object before the replicas: kopf's non-mandatory peering runs a replica
    # standalone (active) when it starts and finds no ClusterKopfPeering.
    rest, _ = deploy.served(node_cluster.dev,
                            [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    assert pick(rest, "ClusterKopfPeering", "trellis")
    node_cluster.apply([d for d in rest if d["kind"] != "Deployment"])
    node_cluster.apply(pick(rest, "Deployment"))
    node_cluster.kubectl("rollout", "status", "deployment/trellis-operator", "-n", SYSTEM_NS,
                         "--timeout=180s", timeout=200)
    pods = json.loads(node_cluster.kubectl(
        "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=trellis-operator",
        "-o", "json").stdout)["items"]
    yield pods
    node_cluster.kubectl("delete", "deployment", "trellis-operator", "-n", SYSTEM_NS,
                         "--wait=true", "--timeout=60s", check=False)


def _reconciles(pod: dict) -> float:
    """The pod's own count of reconcile passes, from its /metrics."""
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8000/metrics",
                                timeout=5) as resp:
        body = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("trellis_reconciles_total{"))


def test_two_replicas_run_from_the_controller_image_and_peer(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    assert len(operator_pods) == 2
    for pod in operator_pods:
        spec = pod["spec"]
        assert spec["containers"][0]["image"] == images.REFS["controller"]
        assert spec["serviceAccountName"] == "trellis-operator"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    names = {p["metadata"]["name"] for p in operator_pods}

    def both_peering() -> bool:
        peering = json.loads(node_cluster.kubectl(
            "get", "clusterkopfpeering", "trellis", "-o", "json").stdout)
        return names <= set(peering.get("status") or {})

    wait_for(both_peering, timeout=120, interval=1, what="both replicas in the peering")
    for pod in operator_pods:  # each serves metrics, the standby too
        _reconciles(pod)


def test_the_operator_pod_reconciles_and_refuses_to_train_in_itself(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    ns = node_cluster.create_namespace("operator-pod")
    node_cluster.apply(example("Experiment"), ns)  # backend: local

    def stalled():
        obj = node_cluster.get("experiment", "classifier", ns)
        cond = condition(obj, api.Cond.STALLED)
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(stalled, timeout=90, interval=1, what="Stalled LocalTrainingDisabled")
    assert cond["reason"] == api.Reason.LOCAL_TRAINING_DISABLED
    assert "backend: kubernetes" in cond["message"]
    # One leader: only one replica reconciled it; the other stood by.
    counts = sorted(_reconciles(pod) for pod in operator_pods)
    assert counts[0] == 0 < counts[1], counts
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


# ------------------------------------------------------------------ training in pods
def _team_namespace(cluster: Cluster, name: str) -> str:
    """A team namespace as docs/install.md sets one up (``deploy.team_namespace``)."""
    ns = cluster.create_namespace(name)
    deploy.team_namespace(cluster.dev, ns)
    return ns


def _experiment(name: str, resources: dict[str, Any], **parameters: Any) -> dict[str, Any]:
    """The example Experiment with no backend: the operator's default (kubernetes)."""
    exp = example("Experiment")
    exp["metadata"]["name"] = name
    exp["spec"].pop("backend")
    exp["spec"]["resources"] = resources
    exp["spec"]["parameters"] = {**exp["spec"]["parameters"], **parameters}
    return exp


def _pods(cluster: Cluster, ns: str, experiment: str) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl(
        "get", "pods", "-n", ns, "-l", f"{api.LABEL_EXPERIMENT}={experiment}",
        "-o", "json").stdout)["items"]


def _finished(cluster: Cluster, ns: str, experiment: str) -> dict[str, Any]:
    """The Experiment once its run has succeeded or failed."""
    def done() -> dict | None:
        obj = cluster.get("experiment", experiment, ns) or {}
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") \
            else None

    return wait_for(done, timeout=900, interval=2, what="the run to finish")


def _running_pods(cluster: Cluster) -> list[dict]:
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=trellis-operator",
        "-o", "json").stdout)["items"]
    return [p for p in pods if p["status"].get("podIP") and not
            p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]


def test_an_experiment_trains_in_one_pod_to_a_model_in_s3_across_a_failover(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    """The active replica is force-deleted while the run is in flight: the standby takes
    over, re-attaches to the Job, and the run is still one run and one model version."""
    ns = _team_namespace(node_cluster, "train-in-pods")
    before = {p["metadata"]["name"]: _reconciles(p) for p in _running_pods(node_cluster)}
    node_cluster.apply(_experiment("classifier", {"cpu": "1", "memory": "2Gi", "gpu": 0},
                                   n_samples=1500), ns)

    def job_running() -> str | None:
        obj = node_cluster.get("experiment", "classifier", ns) or {}
        current = (obj.get("status") or {}).get("currentRun") or {}
        return current.get("job") if current.get("launched") else None

    wait_for(job_running, timeout=120, interval=1, what="the run's Job recorded")
    active = [p for p in _running_pods(node_cluster)
              if _reconciles(p) > before.get(p["metadata"]["name"], 0)]
    assert len(active) == 1, [p["metadata"]["name"] for p in active]
    node_cluster.kubectl("delete", "pod", active[0]["metadata"]["name"], "-n", SYSTEM_NS,
                         "--force", "--grace-period=0")

    obj = _finished(node_cluster, ns, "classifier")
    status = obj["status"]
    pods = _pods(node_cluster, ns, "classifier")
    logs = node_cluster.kubectl("logs", "-n", ns, "-l", f"{api.LABEL_EXPERIMENT}=classifier",
                                "--tail=40", check=False).stdout
    assert status["phase"] == "Succeeded", (status, logs)
    [run] = status["runs"]  # one run: the new leader re-attached, never launched again
    assert run["reason"] == api.Reason.MODEL_REGISTERED, run
    jobs = node_cluster.kubectl("get", "jobs", "-n", ns, "-o", "name").stdout.split()
    assert len(jobs) == 1, jobs
    # one pod ran every step, as the trainer image's non-root user, sized as asked
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    spec = pods[0]["spec"]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["containers"][0]["image"] == images.REFS["trainer"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    [model] = status["models"]
    assert model["version"] == 1 and model["metrics"]["accuracy"] >= 0.9, model
    assert model["artifactUri"] == f"s3://trellis/metaflow/models/{run['pathspec']}"
    assert model["referenceUri"] == model["artifactUri"] + "/reference.json"
    # the version directory and Metaflow's datastore, in the S3 server
    s3 = s3_client(node_cluster, ns)
    prefix = f"metaflow/models/{run['pathspec']}/"
    files = {o["Key"][len(prefix):] for o in
             s3.list_objects_v2(Bucket="trellis", Prefix=prefix).get("Contents", [])}
    assert files == {"model.pt", "reference.json", "metrics.json", "meta.json"}
    meta = json.loads(s3.get_object(Bucket="trellis", Key=prefix + "meta.json")["Body"].read())
    assert meta["commit"] == model["commit"] and meta["run"] == run["pathspec"].split("/")[1]
    reference = json.loads(s3.get_object(Bucket="trellis",
                                         Key=prefix + "reference.json")["Body"].read())
    assert reference, "reference statistics for the drift monitor"
    stored = s3.list_objects_v2(Bucket="trellis", Prefix="metaflow/PumpkinFlow/")
    assert stored.get("KeyCount", 0) > 0, "Metaflow's datastore is in S3"
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_gpu_the_node_lacks_is_named_and_deleting_removes_the_pods(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    ns = _team_namespace(node_cluster, "train-gpu")
    node_cluster.apply(_experiment("wants-gpu", {"cpu": "1", "memory": "1Gi", "gpu": 1}), ns)

    def blocked() -> dict | None:
        obj = node_cluster.get("experiment", "wants-gpu", ns) or {}
        cond = condition(obj, api.Cond.READY)
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for(blocked, timeout=180, interval=1, what="Ready=False Unschedulable")
    assert "nvidia.com/gpu" in cond["message"], cond
    assert _pods(node_cluster, ns, "wants-gpu"), "the Job's pod exists, pending"
    node_cluster.kubectl("delete", "experiment", "wants-gpu", "-n", ns, "--timeout=120s",
                         timeout=150)
    wait_for(lambda: not _pods(node_cluster, ns, "wants-gpu"), timeout=120, interval=1,
             what="every pod of the run gone")
    assert node_cluster.kubectl("get", "jobs", "-n", ns, "-o", "name").stdout.strip() == ""
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.skipif(images.default_mode() != "baked",
                    reason="the restricted profile forbids the hostPath volume a mounted "
                           "environment needs: `make test-images` runs this, baked")
def test_a_restricted_namespace_trains_with_the_baked_trainer_image(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    """The team namespace enforces Pod Security's ``restricted`` profile, and the trainer
    image carries its environment in its layers: what a locked-down cluster runs."""
    ns = _team_namespace(node_cluster, "train-restricted")
    node_cluster.kubectl("label", "namespace", ns, "--overwrite",
                         "pod-security.kubernetes.io/enforce=restricted",
                         "pod-security.kubernetes.io/enforce-version=latest")
    node_cluster.apply(_experiment("classifier", {"cpu": "1", "memory": "2Gi", "gpu": 0},
                                   n_samples=1500), ns)

    obj = _finished(node_cluster, ns, "classifier")
    logs = node_cluster.kubectl("logs", "-n", ns, "-l", f"{api.LABEL_EXPERIMENT}=classifier",
                                "--tail=40", check=False).stdout
    assert obj["status"]["phase"] == "Succeeded", (obj["status"], logs)
    [model] = obj["status"]["models"]
    assert model["version"] == 1 and model["metrics"]["accuracy"] >= 0.9, model
    [pod] = _pods(node_cluster, ns, "classifier")
    spec = pod["spec"]
    assert spec["containers"][0]["image"] == images.REFS["trainer"]
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v], spec["volumes"]
    context = spec["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False, context
    assert context["capabilities"]["drop"] == ["ALL"], context
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", spec
    s3 = s3_client(node_cluster, ns)
    key = model["artifactUri"].removeprefix("s3://trellis/") + "/model.pt"
    assert s3.head_object(Bucket="trellis", Key=key)["ContentLength"] > 0
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


# ------------------------------------------------------------------ drift, then retrain
ANSWERS = Path(__file__).resolve().parents[1] / "support" / "pumpkin_answers.py"
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"


def _white_pumpkins(n: int, batch: int) -> list[tuple[list, list[int]]]:
    """Photos of the white pumpkins the model never saw, in batches, with their truth."""
    if str(FLOWS_DIR) not in sys.path:
        sys.path.insert(0, str(FLOWS_DIR))
    import pumpkin_data

    data = pumpkin_data.generate(n, seed=7, variety="white")
    keep = data.y >= 0
    x, y = data.x[keep].round(3), data.y[keep]
    return [(x[i:i + batch].tolist(), [int(v) for v in y[i:i + batch]])
            for i in range(0, len(x) - batch + 1, batch)]


def _answers(model_dir: Path, messages: list[dict]) -> list[dict]:
    """What a model-server pod of that version answers (tests/support/pumpkin_answers.py)."""
    done = subprocess.run([str(SERVING_PYTHON), str(ANSWERS)], input=json.dumps(messages),
                          env={"PATH": "/usr/bin:/bin", "MODEL_URI": str(model_dir),
                               "HOME": str(model_dir)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# ------------------------------------------------------------------ drift inputs
def _post(pod: dict, path: str, body: dict, headers: dict[str, str] | None = None) -> int:
    """POST to a replica's request-logger port, as Seldon's executor does."""
    return post_event(f"http://{pod['status']['podIP']}:8081{path}", body, headers)


def test_drift_in_the_cluster_retrains_in_a_pod_from_feedback_in_s3(
        node_cluster: Cluster, operator_pods: list[dict], tmp_path: Path) -> None:
    """No Seldon Core operator runs here, so this test plays Seldon's part: it marks the
    SeldonDeployment Available as Seldon writes it, and posts each prediction's request and
    response — answered by the project's model class loading v1 as downloaded from S3 —
    to the operator's request-logger receivers as Seldon's executor does (binary
    CloudEvents, the two halves at different replicas), then the truth as the
    ``io.seldon.serving.feedback`` event Seldon logs.
    The rest is the product, in pods: the drift monitor detects the white pumpkins, exports
    the labelled inputs to S3, and the Experiment retrains in a Job whose pod reads them
    from S3 and registers v2."""
    ns = _team_namespace(node_cluster, "drift-retrain")
    exp = _experiment("classifier", {"cpu": "1", "memory": "2Gi", "gpu": 0}, n_samples=1500)
    exp["spec"]["retrain"] = {"cooldownSeconds": 0, "includeFeedback": True}
    mdep = example("ModelDeployment")
    mdep["spec"]["backend"] = "seldon"
    mdep["spec"]["drift"] = {"enabled": True, "test": "ks", "window": 200, "minSamples": 100,
                             "pValue": 0.001, "action": "retrain", "cooldown": "0s"}
    node_cluster.apply(exp, ns)
    node_cluster.apply(mdep, ns)

    def models() -> list[dict]:
        obj = node_cluster.get("experiment", "classifier", ns) or {}
        return (obj.get("status") or {}).get("models") or []

    [v1] = wait_for(models, timeout=900, interval=2, what="v1 trained in a pod")
    wait_predictors(node_cluster, ns, [("stable", "v1", 100)], timeout=120)
    mark_available(node_cluster, ns)
    wait_for(lambda: mdep_status(node_cluster, ns).get("phase") == "Serving",
             timeout=120, interval=1, what="v1 serving")

    # v1 as Seldon's storage initializer would fetch it into the model-server pod
    s3 = s3_client(node_cluster, ns)
    prefix = v1["artifactUri"].removeprefix("s3://trellis/") + "/"
    model_dir = tmp_path / "models" / "1"
    model_dir.mkdir(parents=True)
    for name in ("model.pt", "meta.json"):
        s3.download_file("trellis", prefix + name, str(model_dir / name))
    batches = _white_pumpkins(400, batch=10)
    answers = _answers(model_dir, [{"data": {"ndarray": x}} for x, _ in batches])

    replicas = _running_pods(node_cluster)  # the Service spreads Seldon's posts over them

    def log(i: int, *, truth: bool) -> int:
        """Prediction ``i`` as Seldon's executor logs it, its halves at different replicas;
        with its truth, the labels sent."""
        (x, y), answer = batches[i], answers[i]
        puid = f"white-{i}"
        answer["meta"]["puid"] = puid
        first, second = replicas[i % len(replicas)], replicas[(i + 1) % len(replicas)]
        hdrs = {"Ce-Requestid": puid, "Ce-Namespace": ns, "Ce-Modelid": "classifier",
                "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "stable",
                "Ce-Specversion": "1.0", "Ce-Source": f"http://classifier-stable.{ns}:8000/"}
        codes = [_post(first, "/", {"data": {"ndarray": x}},
                       {**hdrs, "Ce-Type": "io.seldon.serving.inference.request"}),
                 _post(second, "/", answer,
                       {**hdrs, "Ce-Type": "io.seldon.serving.inference.response"})]
        if truth:  # Seldon logs feedback under a puid of its own
            codes.append(_post(first, "/", {"request": {"data": {"ndarray": x}},
                                            "response": answer,
                                            "truth": {"data": {"ndarray": y}}},
                               {**hdrs, "Ce-Requestid": f"fb-{i}",
                                "Ce-Type": "io.seldon.serving.feedback"}))
        assert codes == [202] * len(codes), (i, codes)
        return len(y) if truth else 0

    for i in range(12):  # more than minSamples of white pumpkins, unlabelled yet
        log(i, truth=False)
    drifted = wait_for(lambda: condition(node_cluster.get("mdep", "classifier", ns),
                                         "DriftDetected"), timeout=120, interval=1,
                       what="DriftDetected")
    assert drifted["status"] == "True", drifted
    # the farmers' truth after the onset: what a retrain learns from
    labelled = sum(log(i, truth=True) for i in range(12, len(batches)))
    assert labelled >= 200
    [_, v2] = wait_for(lambda: len(models()) == 2 and models(), timeout=900, interval=2,
                       what="v2 registered by the retrain Job")
    assert v2["version"] == 2 and v2["artifactUri"].startswith("s3://trellis/"), v2

    obj = node_cluster.get("experiment", "classifier", ns)
    runs = obj["status"]["runs"]
    assert [r["reason"] for r in runs] == [api.Reason.MODEL_REGISTERED] * 2, runs
    jobs = json.loads(node_cluster.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)
    by_trigger: dict[str, tuple[dict, dict]] = {}
    for job in jobs["items"]:
        env = {e["name"]: e.get("value") for e in
               job["spec"]["template"]["spec"]["containers"][0]["env"]}
        request = json.loads(env["TRELLIS_RUN_REQUEST"])
        by_trigger[request["tags"].get("trellis.trigger", "")] = (job, request)
    assert len(by_trigger) == 2, sorted(by_trigger)
    episode = next(t for t in by_trigger if t)
    job, request = by_trigger[episode]
    feedback_uri = request["parameters"]["feedback_uri"]
    assert feedback_uri.startswith("s3://trellis/") and episode in feedback_uri, feedback_uri
    key = feedback_uri.removeprefix("s3://trellis/")
    assert s3.head_object(Bucket="trellis", Key=key)["ContentLength"] > 0
    # the retrain pod read them from S3: the flow says how many labelled inputs it got
    said = node_cluster.kubectl("logs", "-n", ns, f"job/{job['metadata']['name']}",
                                "--tail=-1").stdout
    counts = [int(n) for n in re.findall(
        r"collected \d+ photos and (\d+) labelled live inputs", said)]
    assert counts and 0 < counts[-1] <= labelled, said[-3000:]
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _logged_in_s3(s3: Any, ns: str) -> tuple[set[str], set[str], list[str]]:
    """The drift log's copy in S3: its predictions, labelled ones, and the objects."""
    prefix = f"requestlog/log/{ns}/classifier/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="trellis", Prefix=prefix)
            .get("Contents", [])]
    puids: set[str] = set()
    labelled: set[str] = set()
    for key in keys:
        try:
            body = s3.get_object(Bucket="trellis", Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:  # the active replica rewrote it since the listing:
            continue  # this look is incomplete, and the caller's wait looks again
        if key.endswith(".npz"):
            with np.load(io.BytesIO(body)) as z:
                puids.update(str(p) for p in z["puid"])
        elif key.endswith(".jsonl"):
            labelled.update(json.loads(line)["puid"] for line in body.splitlines() if line)
    return puids, labelled, keys


def test_drift_inputs_sent_to_both_replicas_reach_one_log_and_survive_a_failover(
        node_cluster: Cluster, operator_pods: list[dict]) -> None:
    """Seldon's request logger as the Service spreads it: request and response of one
    prediction at different replicas. Both acknowledge; the active one logs every pair,
    and after it is force-deleted the survivor's log (kept in S3) still has them all."""
    ns = _team_namespace(node_cluster, "drift-feed")
    setup_objects(node_cluster, ns, drift={"enabled": True, "action": "alert"})
    wait_for(lambda: predictors(node_cluster, ns) == [("stable", "v1", 100)], timeout=120,
             interval=1, what="the SeldonDeployment")
    mark_available(node_cluster, ns)
    # Two replicas (an earlier test's failover left a replacement starting, maybe).
    def two_ready() -> list[dict] | None:
        pods = [p for p in _running_pods(node_cluster)
                if all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]
        return pods if len(pods) == 2 else None

    pods = wait_for(two_ready, timeout=120, interval=1, what="two operator replicas ready")
    image = [[[0.5] * 3] * 64] * 64
    acked: set[str] = set()
    labelled: set[str] = set()

    def send(prefix: str, count: int, to: list[dict]) -> None:
        for i in range(count):
            puid = f"{prefix}{i}"
            hdrs = {"Ce-Requestid": puid, "Ce-Namespace": ns, "Ce-Modelid": "classifier",
                    "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "stable",
                    "Ce-Specversion": "1.0"}
            answer = {"data": {"names": ["bad", "good"], "ndarray": [[0.2, 0.8]]},
                      "meta": {"tags": {"trellis.features": [[float(i), 1.0]],
                                        "trellis.version": 1}}}
            first, second = to[i % len(to)], to[(i + 1) % len(to)]
            codes = [_post(first, "/", {"data": {"ndarray": [image]}},
                           {**hdrs, "Ce-Type": "io.seldon.serving.inference.request"}),
                     _post(second, "/", answer,
                           {**hdrs, "Ce-Type": "io.seldon.serving.inference.response"})]
            if i % 2 == 0:
                codes.append(_post(first, f"/feedback/{ns}/classifier",
                                   {"puid": puid, "label": 1}))
                labelled.add(puid)
            assert codes == [202] * len(codes), (puid, codes)
            acked.add(puid)

    s3 = s3_client(node_cluster, ns)
    send("before", 20, pods)
    wait_for(lambda: _logged_in_s3(s3, ns)[:2] == (acked, labelled), timeout=60, interval=1,
             what="every acknowledged prediction in the drift log's copy")
    active = [p for p in pods if _reconciles(p) > 0]
    assert len(active) == 1, [p["metadata"]["name"] for p in active]
    survivor = next(p for p in pods if p is not active[0])
    send("last", 10, pods)
    node_cluster.kubectl("delete", "pod", active[0]["metadata"]["name"], "-n", SYSTEM_NS,
                         "--force", "--grace-period=0")
    send("standby", 6, [survivor])
    wait_for(lambda: _reconciles(survivor) > 0, timeout=150, interval=2,
             what="the survivor reconciling")
    wait_for(lambda: _logged_in_s3(s3, ns)[:2] == (acked, labelled), timeout=60, interval=1,
             what="every acknowledged prediction in the new leader's log")
    keys = _logged_in_s3(s3, ns)[2]
    assert all(f"-{survivor['metadata']['name']}/" in k for k in keys), keys
    inbox = s3.list_objects_v2(Bucket="trellis", Prefix=f"requestlog/inbox/{ns}/")
    assert inbox.get("KeyCount", 0) == 0
    logging = condition(node_cluster.get("mdep", "classifier", ns), "RequestLogging")
    assert logging is not None and logging["status"] == "True"
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")
