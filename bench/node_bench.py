"""The dev cluster's node: how long it takes to start, and how fast pods start on it.

1. Node start: ``DevCluster.up(node=True)`` to "pods can run" (Node Ready, default
   ServiceAccount, the `kubernetes` Service's endpoint, kube-proxy synced, CRDs served),
   first in a new state directory (cold: certificates, containerd state, the pause
   image checked), then again after ``down`` (warm). Baseline: the control plane alone.
2. Pod start latency: a busybox pod from create to Running, and a Job from create to
   Complete, sequentially, median and spread over repeats.

Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rows import row  # noqa: E402
from controller.devcluster.cluster import DevCluster  # noqa: E402
from tests.support.testimages import BUSYBOX_IMAGE, ensure_test_images  # noqa: E402

REPEATS = 10



def _timed_up(dev: DevCluster, node: bool) -> float:
    started = time.monotonic()
    dev.up(node=node, log=lambda m: print(m, file=sys.stderr))
    return time.monotonic() - started


def _wait(dev: DevCluster, args: list[str], want: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = dev.kubectl(*args, check=False).stdout.strip()
        if out == want:
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {args} == {want}")


def _spread(samples: list[float]) -> str:
    return (f"median of {len(samples)}; min {min(samples):.2f}s, max {max(samples):.2f}s, "
            f"stdev {statistics.pstdev(samples):.2f}s")


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="trellis-node-bench-") as tmp:
        plain = DevCluster(Path(tmp) / "plain")
        control_plane = _timed_up(plain, node=False)
        plain.down()
        dev = DevCluster(Path(tmp) / "node")
        try:
            cold = _timed_up(dev, node=True)
            dev.down()
            warm = _timed_up(dev, node=True)
            rows.append(row("node: up --node, new state dir (pods can run)", cold, "s",
                            "control plane alone (etcd + kube-apiserver + CRDs)",
                            control_plane, "binaries and images already cached"))
            rows.append(row("node: up --node again after down", warm, "s",
                            "control plane alone", control_plane))
            ensure_test_images(dev)
            dev.kubectl("create", "namespace", "bench")
            _wait(dev, ["get", "sa", "default", "-n", "bench", "-o", "name"],
                  "serviceaccount/default")
            pods, jobs = [], []
            for i in range(REPEATS):
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"},
                       "spec": {"restartPolicy": "Never", "containers": [{
                           "name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                           "command": ["sleep", "600"]}]}}
                started = time.monotonic()
                dev.kubectl("apply", "-n", "bench", "-f", "-", input=json.dumps(pod))
                _wait(dev, ["get", "pod", f"p{i}", "-n", "bench", "-o",
                            "jsonpath={.status.phase}"], "Running")
                pods.append(time.monotonic() - started)
                job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"j{i}"},
                       "spec": {"backoffLimit": 0, "template": {"spec": pod["spec"] | {
                           "containers": [pod["spec"]["containers"][0]
                                          | {"command": ["true"]}]}}}}
                started = time.monotonic()
                dev.kubectl("apply", "-n", "bench", "-f", "-", input=json.dumps(job))
                _wait(dev, ["get", "job", f"j{i}", "-n", "bench", "-o",
                            "jsonpath={.status.succeeded}"], "1")
                jobs.append(time.monotonic() - started)
                dev.kubectl("delete", "pod", f"p{i}", "-n", "bench", "--wait=false")
            rows.append(row("node: pod create -> Running (busybox)",
                            statistics.median(pods), "s", notes=_spread(pods)))
            rows.append(row("node: Job create -> Complete (busybox `true`)",
                            statistics.median(jobs), "s", notes=_spread(jobs)))
        finally:
            dev.down()
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
