"""``trellis dev-cluster down`` takes the local-mode processes of its operators with it:
model servers and routers are detached on purpose (they outlive an operator restart), so
only the record an operator keeps of its state dir leads to them once it is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controller import localwork
from controller.devcluster.cluster import DevCluster
from tests.support.fake_model import make_images, payload, write_model_version
from tests.support.kube import Cluster, OperatorProcess, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
TRELLIS = Path(sys.executable).with_name("trellis")


def answers(url: str) -> bool:
    body = json.dumps(payload(make_images(1, seed=3))).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_down_stops_what_a_gone_operator_left_serving(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path / "cluster")
    dev.up()
    try:
        cluster, state = Cluster(dev), tmp_path / "state"
        env = {"KUBECONFIG": str(dev.kubeconfig), "TRELLIS_STATE_DIR": str(state),
               "TRELLIS_METRICS_PORT": "0", "TRELLIS_REQUEST_LOGGER_PORT": "0",
               "TRELLIS_WEBHOOK_PORT": "0", "TRELLIS_RESYNC_SECONDS": "5",
               "TRELLIS_LOG_FORMAT": "text"}
        ns = cluster.create_namespace("farm")
        model = write_model_version(tmp_path / "v1", seed=1)
        first = OperatorProcess(env, tmp_path / "op1.log", ["-n", ns]).start()
        try:
            exp = base("Experiment")
            exp["spec"]["flow"]["file"] = "flows/not-here.py"
            cluster.apply(exp, ns)
            cluster.kubectl("patch", "exp", "classifier", "-n", ns, "--subresource=status",
                            "--type=merge", "-p", json.dumps({"status": {"models": [
                                {"version": 1, "artifactUri": f"file://{model}"}]}}))
            mdep = base("ModelDeployment")
            mdep["spec"]["drift"] = {"enabled": False}
            cluster.apply(mdep, ns)
            status = wait_for(lambda: ((cluster.get("mdep", "classifier", ns) or {})
                                       .get("status") or {}).get("phase") == "Serving"
                              and cluster.get("mdep", "classifier", ns)["status"],
                              timeout=180, interval=1, what="serving")
        finally:
            first.kill()  # gone without a word: its servers keep serving
        url = status["endpoint"]
        assert answers(url)
        second = OperatorProcess(env, tmp_path / "op2.log", ["-n", ns]).start()  # a restart
        wait_for(lambda: "context ready" in second.log(), timeout=90, what="the restart")
        second.stop()
        serving = localwork.find([state])
        assert len(serving) >= 2 and answers(url)  # a router and a model server, at least

        down = subprocess.run([str(TRELLIS), "dev-cluster", "down", "--dir", str(dev.dir)],
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert localwork.find([state]) == [] and not answers(url)
        assert (state / "serving" / ns / "classifier" / "logs").is_dir()  # kept for a reader
    finally:
        dev.down()
