"""What Seldon Core 1.17.1's operator would create for a SeldonDeployment, as pods on the
dev cluster's node: test support standing in for an upstream component, never product code.

Seldon's operator cannot run here (its Go module is not served), so ``SeldonPods.sync``
creates for each predictor of the rendered SeldonDeployment what its
``seldondeployment_controller.go`` would (facts in /work/shared/seldon-contract.md):

- a Deployment ``<sdep>-<predictor>-0-<container>`` with the predictor's labels, Seldon's
  ``seldon-app`` / ``seldon-deployment-id`` labels and its Prometheus annotations;
- in its pod, the storage initializer (an init container ``<container>-model-initializer``
  that downloads ``graph.modelUri`` from S3 into the ``/mnt/models`` emptyDir with the
  credentials of ``graph.envSecretRefName``; Seldon's uses rclone, this one the controller
  image's boto3), the predictor's own container from its own image with the environment
  Seldon injects (``seldon_host.model_env``) and the ports it names (``http`` 9000,
  ``metrics`` 6000), and ``seldon-container-engine``: here the executor's metrics
  stand-in (``tests.support.executor_metrics``, standard library only, run by the
  model-server image's Python from a ConfigMap) on port 8000 in front of the model;
- a Service ``<sdep>-<predictor>`` on 8000 selecting the predictor's pods.

Nothing registers the pods with Prometheus: the dev cluster's (``dev-cluster up
--prometheus``) discovers them through the API server as Seldon's PodMonitor would select
them, by their ``app.kubernetes.io/managed-by`` label and their ports named ``metrics`` (the
executor at ``:8000/prometheus``, the model's own metrics at ``:6000/prometheus``). The
ingress splits its stream over the predictors' Services by their ``traffic`` weights, as
Istio would.

In the default test mode the images' Python environments are mounted read-only from the
host cache (``controller.devcluster.images.pod_volumes``).
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from controller.devcluster import images
from tests.support.executor_metrics import encode_predictor
from tests.support.kube import Cluster, wait_for
from tests.support.seldon_host import METRICS_PATH, Ingress, model_container, model_env

EXECUTOR_SCRIPT = Path(__file__).resolve().with_name("executor_metrics.py")
EXECUTOR_CONFIGMAP = "seldon-executor-stand-in"
ENGINE = "seldon-container-engine"  # Seldon's name for the executor container
HTTP_PORT, GRPC_PORT, METRICS_PORT, ENGINE_PORT, ENGINE_GRPC_PORT = 9000, 9500, 6000, 8000, 5001
ROLLOUT_TIMEOUT_S = 240

# The storage initializer: every object under the URI's prefix into /mnt/models.
FETCH_MODEL = """
import os, pathlib, sys
from controller.objectstore import ObjectStore, join
uri, target = sys.argv[1].rstrip("/"), pathlib.Path(sys.argv[2])
store = ObjectStore(os.environ.get("TRELLIS_S3_ENDPOINT_URL", ""))
names = [u[len(uri) + 1:] for u in store.list(uri + "/")]
if not names:
    sys.exit(f"no objects under {uri}")
for name in names:
    (target / name).parent.mkdir(parents=True, exist_ok=True)
    (target / name).write_bytes(store.read(join(uri, name)))
print(f"downloaded {len(names)} objects from {uri}")
"""


def s3_client(cluster: Cluster, ns: str) -> Any:
    """boto3 with the endpoint and credentials of the namespace's Secret ``trellis-s3``."""
    import boto3

    secret = cluster.get("secret", "trellis-s3", ns)
    assert secret is not None, f"no Secret trellis-s3 in {ns}"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return boto3.client("s3", endpoint_url=data["TRELLIS_S3_ENDPOINT_URL"],
                        aws_access_key_id=data["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=data["AWS_SECRET_ACCESS_KEY"],
                        region_name=data.get("AWS_DEFAULT_REGION") or "us-east-1")


def _seldon_labels(sdep: str, predictor: dict[str, Any], container: str) -> dict[str, str]:
    """The pod's labels as ``createDeploymentWithoutEngine`` and the webhook's defaults
    leave them (the predictor's own labels first)."""
    return {**(predictor.get("labels") or {}),
            "app": f"{sdep}-{predictor['name']}-0-{container}",
            "fluentd": "true", "seldon-app": f"{sdep}-{predictor['name']}",
            f"seldon-app-svc-{container}": f"{sdep}-{predictor['name']}-{container}",
            "seldon-deployment-id": sdep, "seldon.io/model": "true",
            "app.kubernetes.io/managed-by": "seldon-core"}


class SeldonPods:
    """A SeldonDeployment's predictors as Deployments and Services; see the module docstring."""

    def __init__(self, cluster: Cluster, namespace: str, *,
                 ingress: Ingress | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.ingress = ingress
        node = cluster.dev.node.state()
        assert node is not None, "SeldonPods needs the dev cluster's node"
        self.containerd_socket = node.containerd_socket
        self.images = images.ensure_images(Path(node.containerd_socket),
                                           names=("controller", "model-server"))
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": EXECUTOR_CONFIGMAP},
                       "data": {"executor_metrics.py": EXECUTOR_SCRIPT.read_text()}}, namespace)

    # ------------------------------------------------------------------- sync
    def sync(self, sdep: dict[str, Any]) -> None:
        """Apply every predictor's Deployment and Service, wait for their rollouts, remove
        what no predictor names any more, then point the ingress at the predictors'
        Services. A weight change alone changes no pod (as in Seldon, whose executor does
        not route between predictors)."""
        name = sdep["metadata"]["name"]
        predictors = sdep["spec"]["predictors"]
        for predictor in predictors:
            self.cluster.apply([self.deployment(sdep, predictor),
                                self.service(name, predictor)], self.namespace)
        for predictor in predictors:
            deployment = self._deployment_name(name, predictor)
            self.cluster.kubectl("rollout", "status", f"deployment/{deployment}", "-n",
                                 self.namespace, f"--timeout={ROLLOUT_TIMEOUT_S}s",
                                 timeout=ROLLOUT_TIMEOUT_S + 20)
        wanted = {f"{name}-{p['name']}" for p in predictors}
        stale = [app for app in self._apps(name) if app not in wanted]
        self.publish(sdep)  # no traffic for what goes ...
        for app in stale:  # ... before it goes
            self.cluster.kubectl("delete", "deployment,service", "-n", self.namespace,
                                 "-l", f"seldon-app={app}", "--wait=false")

    def publish(self, sdep: dict[str, Any]) -> None:
        """Routes to the predictors' Services, by their weights."""
        name = sdep["metadata"]["name"]
        if self.ingress is not None:
            self.ingress.route({p["name"]: (self.url(name, p["name"]), int(p.get("traffic", 0)))
                                for p in sdep["spec"]["predictors"]})

    def url(self, sdep: str, predictor: str) -> str:
        """The predictor's Service, as the ingress reaches it (its ClusterIP)."""
        svc = self.cluster.get("service", f"{sdep}-{predictor}", self.namespace)
        assert svc is not None, f"no Service {sdep}-{predictor}"
        return f"http://{svc['spec']['clusterIP']}:{ENGINE_PORT}"

    def pods(self, sdep: str, predictor: str | None = None) -> list[dict[str, Any]]:
        """The Ready, not terminating pods of ``sdep`` (of one predictor if named)."""
        selector = (f"seldon-app={sdep}-{predictor}" if predictor
                    else f"seldon-deployment-id={sdep}")
        items = json.loads(self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json").stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")
                and p["status"].get("podIP")
                and any(c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"].get("conditions") or [])]

    def _apps(self, sdep: str) -> set[str]:
        out = self.cluster.kubectl("get", "deployments", "-n", self.namespace, "-l",
                                   f"seldon-deployment-id={sdep}", "-o",
                                   "jsonpath={.items[*].metadata.labels.seldon-app}").stdout
        return set(out.split())

    # ------------------------------------------------------- container restart
    def crash_engine(self, sdep: str, predictor: str) -> dict[str, Any]:
        """SIGKILL the predictor's executor container through containerd, as a crash would:
        the kubelet restarts it in the same pod (same address, same series), its counters
        begin again at zero. Returns the pod once the container is Ready again."""
        [pod] = self.pods(sdep, predictor)
        status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == ENGINE)
        restarts = status["restartCount"]
        container_id = status["containerID"].split("://", 1)[1]
        subprocess.run(["ctr", "-a", self.containerd_socket, "-n", "k8s.io", "tasks", "kill",
                        "-s", "SIGKILL", container_id], check=True, capture_output=True,
                       timeout=30)

        def restarted() -> dict[str, Any] | None:
            pods = self.pods(sdep, predictor)
            if len(pods) != 1:
                return None
            st = next(c for c in pods[0]["status"]["containerStatuses"] if c["name"] == ENGINE)
            return pods[0] if st["restartCount"] > restarts and st.get("ready") else None

        return wait_for(restarted, timeout=60, interval=0.2, what=f"{predictor}'s {ENGINE} "
                        "restarted and Ready")

    # -------------------------------------------------------------- manifests
    @staticmethod
    def _deployment_name(sdep: str, predictor: dict[str, Any]) -> str:
        return f"{sdep}-{predictor['name']}-0-{predictor['graph']['name']}"

    def deployment(self, sdep: dict[str, Any], predictor: dict[str, Any]) -> dict[str, Any]:
        name = sdep["metadata"]["name"]
        container = model_container(predictor)
        graph = predictor["graph"]
        labels = _seldon_labels(name, predictor, container["name"])
        selector = {k: labels[k] for k in ("seldon-app", f"seldon-app-svc-{container['name']}",
                                           "seldon-deployment-id")}
        annotations = {**(sdep["spec"].get("annotations") or {}),
                       **(predictor.get("annotations") or {})}
        model_server, controller = self.images["model-server"], self.images["controller"]
        server_volumes, server_mounts = images.pod_volumes(model_server)
        init_volumes, init_mounts = images.pod_volumes(controller)
        init_volumes = [{**v, "name": f"init-{v['name']}"} for v in init_volumes]
        init_mounts = [{**m, "name": f"init-{m['name']}"} for m in init_mounts]
        models = {"name": f"{container['name']}-provision-location", "mountPath": "/mnt/models"}
        env = model_env(sdep, predictor, container, http_port=HTTP_PORT, grpc_port=GRPC_PORT,
                        metrics_port=METRICS_PORT)
        secret = graph.get("envSecretRefName")
        model = {
            **{k: v for k, v in container.items() if k not in ("env", "ports")},
            "imagePullPolicy": "IfNotPresent",
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [{"name": "http", "containerPort": HTTP_PORT},
                      {"name": "grpc", "containerPort": GRPC_PORT},
                      {"name": "metrics", "containerPort": METRICS_PORT}],
            "volumeMounts": [*server_mounts, {**models, "readOnly": True}],
        }
        engine = {
            "name": ENGINE, "image": model_server.ref, "imagePullPolicy": "IfNotPresent",
            "command": ["/app/.venv-serving/bin/python", "/executor/executor_metrics.py"],
            "args": ["--sdep", name, "--namespace", self.namespace,
                     "--predictor", predictor["name"],
                     "--http_port", str(ENGINE_PORT), "--prometheus_path", METRICS_PATH,
                     "--upstream", f"http://127.0.0.1:{HTTP_PORT}", "--host", "0.0.0.0"],
            "env": [{"name": "ENGINE_PREDICTOR", "value": encode_predictor(predictor)}],
            "ports": [{"name": "http", "containerPort": ENGINE_PORT},
                      {"name": "metrics", "containerPort": ENGINE_PORT},
                      {"name": "grpc", "containerPort": ENGINE_GRPC_PORT}],
            # Seldon's: initialDelaySeconds 20, periodSeconds 5, and 0.5 CPU / 512Mi
            # requested; shortened and smaller here, for the tests' time and their node
            "readinessProbe": {"httpGet": {"path": "/ready", "port": ENGINE_PORT},
                               "periodSeconds": 1},
            "livenessProbe": {"httpGet": {"path": "/live", "port": ENGINE_PORT},
                              "periodSeconds": 5},
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
            "volumeMounts": [*server_mounts, {"name": "executor", "mountPath": "/executor",
                                              "readOnly": True}],
        }
        initializer = {
            "name": f"{container['name']}-model-initializer", "image": controller.ref,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/app/.venv/bin/python", "-c", FETCH_MODEL],
            "args": [graph["modelUri"], "/mnt/models"],
            **({"envFrom": [{"secretRef": {"name": secret}}]} if secret else {}),
            "volumeMounts": [*init_mounts, models],
        }
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": self._deployment_name(name, predictor),
                         "labels": {**labels, "seldon-deployment-contains-svcorch": "true"},
                         "annotations": annotations},
            "spec": {
                "replicas": int(predictor.get("replicas", sdep["spec"].get("replicas", 1))),
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels, "annotations": {
                        **annotations, "prometheus.io/scrape": "true",
                        "prometheus.io/path": METRICS_PATH}},
                    "spec": {
                        "terminationGracePeriodSeconds": 20,
                        "initContainers": [initializer],
                        "containers": [model, engine],
                        "volumes": [*server_volumes, *init_volumes,
                                    {"name": models["name"], "emptyDir": {}},
                                    {"name": "executor",
                                     "configMap": {"name": EXECUTOR_CONFIGMAP}}],
                    },
                },
            },
        }

    @staticmethod
    def service(sdep: str, predictor: dict[str, Any]) -> dict[str, Any]:
        """The predictor's Service (``createPredictorService``); the per-container Services
        Seldon also creates (``createContainerService``) are left out: nothing here uses them."""
        app = f"{sdep}-{predictor['name']}"
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": app, "labels": {
                    "seldon-app": app, "seldon-deployment-id": sdep,
                    "app.kubernetes.io/managed-by": "seldon-core"},
                    "annotations": predictor.get("annotations") or {}},
                "spec": {"selector": {"seldon-app": app},
                         "ports": [{"name": "http", "port": ENGINE_PORT,
                                    "targetPort": ENGINE_PORT},
                                   {"name": "grpc", "port": ENGINE_GRPC_PORT,
                                    "targetPort": ENGINE_GRPC_PORT}]}}

    def close(self) -> None:
        if self.ingress is not None:
            self.ingress.route({})
