"""The Dockerfile's trainer and model-server images, built here, run as pods on the node:
the trainer runs the real flow to a model version, the model server answers a Seldon
prediction with a model mounted at ``/mnt/models`` (where Seldon's storage initializer
puts it), both as the non-root user the Dockerfile declares.

In the default test mode their CUDA-sized Python environments are mounted read-only
from the host cache at the image's own paths (``controller/devcluster/images.py``);
``make test-images`` runs the same checks with the environments baked into the layers.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from controller.devcluster import images
from tests.support.fake_model import make_images, payload, write_model_version
from tests.support.kube import Cluster, wait_for

pytestmark = pytest.mark.node

RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _image(node_cluster: Cluster, name: str) -> images.ImageInfo:
    node = node_cluster.dev.node.state()
    assert node is not None
    return images.ensure_images(Path(node.containerd_socket), names=(name,))[name]


def _container(info: images.ImageInfo, **fields) -> tuple[dict, list[dict]]:
    volumes, mounts = images.pod_volumes(info)
    return {"name": "main", "image": info.ref, "imagePullPolicy": "IfNotPresent",
            "securityContext": RESTRICTED, "volumeMounts": mounts, **fields}, volumes


def test_trainer_image_runs_the_flow_to_a_model_version(node_cluster: Cluster) -> None:
    info = _image(node_cluster, "trainer")
    ns = node_cluster.create_namespace("trainer-image")
    wait_for(lambda: node_cluster.get("serviceaccount", "default", ns), what="default SA")
    container, volumes = _container(
        info, command=["python", "/app/flows/pumpkin_flow.py", "--no-pylint", "run",
                       "--epochs", "1", "--n_samples", "400", "--seed", "3"],
        env=[{"name": "TRELLIS_MODEL_STORE", "value": "/work/models"},
             {"name": "METAFLOW_DATASTORE_SYSROOT_LOCAL", "value": "/work"},
             {"name": "HOME", "value": "/work"}],
        workingDir="/work")
    container["volumeMounts"] = [*container["volumeMounts"],
                                 {"name": "work", "mountPath": "/work"}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "flow"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never", "containers": [container],
               "volumes": [*volumes, {"name": "work", "emptyDir": {}}]}}}}
    node_cluster.apply(job, ns)
    done = node_cluster.kubectl("wait", "--for=jsonpath={.status.conditions[0].status}=True",
                                "job/flow", "-n", ns, "--timeout=400s", timeout=420,
                                check=False)
    logs = node_cluster.kubectl("logs", "job/flow", "-n", ns, check=False).stdout
    state = node_cluster.get("job", "flow", ns)["status"]
    assert state.get("succeeded") == 1, (done.stderr, state, logs[-3000:])
    assert "Done!" in logs, logs[-3000:]
    assert "model version file:///work/models/PumpkinFlow/" in logs, logs[-3000:]
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_model_server_image_answers_a_seldon_prediction(node_cluster: Cluster,
                                                        tmp_path: Path) -> None:
    info = _image(node_cluster, "model-server")
    model = write_model_version(tmp_path / "models" / "1")
    for path in (tmp_path, *tmp_path.rglob("*")):  # readable by the image's uid 10001
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    ns = node_cluster.create_namespace("model-server-image")
    wait_for(lambda: node_cluster.get("serviceaccount", "default", ns), what="default SA")
    container, volumes = _container(
        info, args=["--http-port", "9000"],
        env=[{"name": "TRELLIS_MODEL_VERSION", "value": "1"}],
        ports=[{"containerPort": 9000}],
        readinessProbe={"httpGet": {"path": "/health/ping", "port": 9000},
                        "periodSeconds": 1})
    container["volumeMounts"] = [*container["volumeMounts"],
                                 {"name": "model", "mountPath": "/mnt/models",
                                  "readOnly": True}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server"},
           "spec": {"containers": [container], "volumes": [
               *volumes, {"name": "model", "hostPath": {"path": str(model),
                                                          "type": "Directory"}}]}}
    node_cluster.apply(pod, ns)
    node_cluster.kubectl("wait", "--for=condition=Ready", "pod/server", "-n", ns,
                         "--timeout=180s", timeout=200)
    ip = node_cluster.get("pod", "server", ns)["status"]["podIP"]
    batch = make_images(4, good=True, seed=1)
    req = urllib.request.Request(f"http://{ip}:9000/api/v1.0/predictions",
                                 data=json.dumps(payload(batch)).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert resp.status == 200
    assert body["data"]["names"] == ["bad", "good"]
    assert len(body["data"]["ndarray"]) == 4
    bad = urllib.request.Request(f"http://{ip}:9000/api/v1.0/predictions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400
    node_cluster.kubectl("delete", "namespace", ns, "--wait=false")
