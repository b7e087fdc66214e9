"""Cluster-mode training vs local mode vs plain PyTorch, same flow, data and epochs.

1. Cluster: a dev cluster with a real node and S3 server (SeaweedFS), the operator
   (this checkout, admin kubeconfig) with ``TRELLIS_DEFAULT_TRAINING_BACKEND=kubernetes``,
   the example Experiment without a backend: a Job whose one pod, from the trainer image
   (environment mounted from the host, ``controller/devcluster/images.py``), runs the
   whole flow against S3. Timed from apply to Succeeded.
2. Local: the same Experiment through the operator's local backend
   (``platform_bench.train_through_operator``).
3. Plain: ``bench/baseline_train.py`` on the same data.
4. How long an Experiment asking for a GPU the node lacks takes to say so (apply →
   Ready=False Unschedulable).

Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.platform_bench import PARAMS, baseline, train_through_operator  # noqa: E402
from bench.rows import emit, row  # noqa: E402
from controller.devcluster import images  # noqa: E402
from controller.devcluster.cluster import DevCluster  # noqa: E402

NS = "bench"
CPU = 2


def _experiment(name: str, gpu: int) -> dict[str, Any]:
    return {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                     "parameters": PARAMS,
                     "resources": {"cpu": CPU, "memory": "4Gi", "gpu": gpu},
                     "objective": {"metric": "accuracy", "goal": "maximize",
                                   "threshold": 0.9}}}


def _status(dev: DevCluster, name: str) -> dict[str, Any]:
    out = dev.kubectl("get", "exp", name, "-n", NS, "-o", "json").stdout
    return json.loads(out).get("status") or {}


def _until(fn, timeout: float, what: str) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(0.25)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def _team_namespace(dev: DevCluster) -> None:
    dev.kubectl("create", "namespace", NS)
    secret = json.loads(dev.kubectl("get", "secret", "trellis-s3", "-n", "trellis-system",
                                    "-o", "json").stdout)
    docs = [{"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "trellis-trainer", "namespace": NS},
             "automountServiceAccountToken": False},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "trellis-s3", "namespace": NS}, "data": secret["data"]}]
    dev.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                      "items": docs}))


def cluster_runs(work: Path) -> tuple[float, dict[str, Any], float, str]:
    """(apply → Succeeded seconds, status, apply → Unschedulable seconds, its message)."""
    dev = DevCluster(work / "cluster")
    st = dev.up(node=True, s3=True, log=lambda m: print(m, file=sys.stderr))
    try:
        node = dev.node.state()
        assert node is not None
        trainer = images.ensure_images(Path(node.containerd_socket), names=("trainer",))
        secret = json.loads(dev.kubectl("get", "secret", "trellis-s3", "-n", "trellis-system",
                                        "-o", "json").stdout)["data"]
        env = {**os.environ, "KUBECONFIG": st.kubeconfig,
               "TRELLIS_STATE_DIR": str(work / "state"), "TRELLIS_METRICS_PORT": "0",
               "TRELLIS_WEBHOOK_PORT": "-1", "TRELLIS_REQUEST_LOGGER_PORT": "-1",
               "TRELLIS_DEFAULT_TRAINING_BACKEND": "kubernetes",
               "TRELLIS_TRAINER_HOST_MOUNTS": json.dumps(trainer["trainer"].mounts),
               "TRELLIS_S3_ENDPOINT_URL":
                   base64.b64decode(secret["TRELLIS_S3_ENDPOINT_URL"]).decode()}
        _team_namespace(dev)
        with open(work / "operator.log", "wb") as log:
            op = subprocess.Popen([sys.executable, "-m", "controller", "-n", NS], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                started = time.perf_counter()
                dev.kubectl("apply", "-f", "-", input=json.dumps(_experiment("classifier", 0)))
                status = _until(lambda: (s := _status(dev, "classifier")).get("phase") in
                                ("Succeeded", "Failed") and not s.get("currentRun") and s,
                                900, "cluster training")
                wall = time.perf_counter() - started
                started = time.perf_counter()
                dev.kubectl("apply", "-f", "-", input=json.dumps(_experiment("wants-gpu", 1)))

                def unschedulable() -> str | None:
                    for cond in _status(dev, "wants-gpu").get("conditions") or []:
                        if cond["type"] == "Ready" and cond["reason"] == "Unschedulable":
                            return cond["message"]
                    return None

                message = _until(unschedulable, 120, "the GPU condition")
                said = time.perf_counter() - started
                dev.kubectl("delete", "exp", "wants-gpu", "-n", NS, "--timeout=60s")
            finally:
                op.terminate()
                op.wait(timeout=30)
        return wall, status, said, message
    finally:
        dev.down()


def main() -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trellis-cluster-bench-") as tmp:
        work = Path(tmp)
        cluster_wall, status, said, message = cluster_runs(work / "c")
        local_wall, local_status = train_through_operator(work / "l")
    base = baseline()
    run = (status.get("runs") or [{}])[-1]
    local_run = (local_status.get("runs") or [{}])[-1]
    acc = run.get("metrics", {}).get("accuracy", 0.0)
    same = (f"CPU, {PARAMS['epochs']} epochs, 3000 photos, cpu={CPU}; accuracy {acc:.3f} "
            f"(cluster) vs {local_run.get('metrics', {}).get('accuracy', 0.0):.3f} (local) "
            f"vs {base['test_accuracy']:.3f} (plain); model {run.get('pathspec')} in S3")
    rows.append(row("cluster training (Job pod, S3) apply → Succeeded", cluster_wall, "s",
                    "same Experiment, local backend", local_wall,
                    same + f"; Metaflow run {run.get('durationSeconds')} s of it"))
    rows.append(row("cluster training (Job pod, S3) vs plain PyTorch", cluster_wall, "s",
                    "plain PyTorch script, same data and epochs", base["wall_seconds"], same))
    rows.append(row("gpu: 1 on a GPU-less node: apply → condition names why", said, "s",
                    None, None, message[:200]))
    emit(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
