"""Local mode: real seldon-core-microservice processes behind the router, driven by the
operator on the real API server — a good v2 is promoted, a bad v3 is rolled back."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.serving.metrics_source import parse_router_metrics
from tests.support.fake_model import labels_of, make_images, payload, write_model_version
from tests.support.kube import Cluster, condition, wait_for
from tests.support.specs import base

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def post(url: str, body: bytes, timeout: float = 15) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Traffic(threading.Thread):
    """Steady single-image requests; records which predictor answered and how."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop_flag = threading.Event()
        self.results: Counter[tuple[str, int]] = Counter()
        images = make_images(32, seed=5)
        self.bodies = [json.dumps(payload(images[i:i + 1])).encode() for i in range(32)]

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            code, answer = post(self.url, self.bodies[i % len(self.bodies)])
            path = (answer.get("meta") or {}).get("requestPath") or {"?": ""}
            self.results[(next(iter(path)), code)] += 1
            i += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(timeout=30)


def register(cluster: Cluster, ns: str, models: dict[int, Path]) -> None:
    entries = [{"version": v, "artifactUri": f"file://{p}", "referenceUri":
                f"file://{p}/reference.json", "run": f"PumpkinFlow/{v}"}
               for v, p in sorted(models.items())]
    cluster.kubectl("patch", "exp", "classifier", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"models": entries}}))


def status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return (cluster.get("mdep", "classifier", ns) or {}).get("status") or {}


def test_local_rollout_promotes_good_and_rolls_back_bad(
        cluster: Cluster, namespace: str, operator: None, tmp_path: Path) -> None:
    models = {1: write_model_version(tmp_path / "v1", seed=1)}
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"  # versions are registered by hand
    cluster.apply(exp, namespace)
    register(cluster, namespace, models)
    mdep = base("ModelDeployment")
    mdep["spec"]["canary"] = {"steps": [10, 50, 100], "interval": "6s",
                              "analysis": {"minRequests": 8, "maxErrorRate": 0.05,
                                           "maxLatencyP99Ms": 2000, "maxPredictionShift": 0.5}}
    mdep["spec"]["drift"] = {"enabled": False}
    cluster.apply(mdep, namespace)
    st = wait_for(lambda: (s := status(cluster, namespace)).get("phase") == "Serving" and s,
                  timeout=120, what="v1 serving")
    url = st["endpoint"]
    assert url.endswith("/api/v1.0/predictions")

    images = make_images(6, seed=9)
    code, answer = post(url, json.dumps(payload(images)).encode())
    assert code == 200, answer
    probs = np.array(answer["data"]["ndarray"])
    assert answer["data"]["names"] == ["bad", "good"]
    assert (probs.argmax(axis=1) == labels_of(images)).mean() >= 0.8

    traffic = Traffic(url)
    traffic.start()
    try:
        models[2] = write_model_version(tmp_path / "v2", seed=2)
        register(cluster, namespace, models)
        weights_seen = []

        def promoted():
            s = status(cluster, namespace)
            w = (s.get("canary") or {}).get("weight")
            if w and (not weights_seen or weights_seen[-1] != w):
                weights_seen.append(w)
            return s.get("stableVersion") == "v2" and not s.get("canary")
        wait_for(promoted, timeout=180, interval=0.3, what="v2 promoted")
        assert weights_seen == [10, 50, 100]

        models[3] = write_model_version(tmp_path / "v3", fail_fraction=0.5, seed=3)
        register(cluster, namespace, models)
        wait_for(lambda: status(cluster, namespace).get("rejectedVersions"), timeout=180,
                 what="v3 rolled back")
        time.sleep(1)
    finally:
        traffic.stop()
    obj = cluster.get("mdep", "classifier", namespace)
    st = obj["status"]
    rejected = st["rejectedVersions"][0]
    assert rejected["version"] == 3 and "error rate" in rejected["message"]
    assert "step 1/3 at 10%" in rejected["message"]  # rolled back at the first failing step
    assert st["stableVersion"] == "v2" and condition(obj, "RolledBack")["status"] == "True"
    assert condition(obj, "Ready")["status"] == "True"

    # stable never failed a request: not from the client's view, not in the router's counters
    failed_stable = {k: n for k, n in traffic.results.items() if k[0] == "stable" and k[1] != 200}
    assert failed_stable == {}, traffic.results
    with urllib.request.urlopen(url.split("/api/")[0] + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for version in (1, 2):
        assert parse_router_metrics(text, "stable", version).errors == 0
    assert parse_router_metrics(text, "canary", 3).errors > 0


BAD_BODIES = [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps({"data": {"ndarray": [[1, 2, 3]]}}).encode(), 400, "shape"),
    (json.dumps({"data": {"ndarray": []}}).encode(), 400, ""),
    (b'{"data": {"ndarray": [' + json.dumps(
        np.full((64, 64, 3), 0.5).tolist()).replace("0.5", "NaN", 1).encode() + b"]}}", 400, ""),
    (b'{"data": {"ndarray": [' + b"0.5," * (10 * 1024 * 1024 // 4) + b"0.5]}}", 413, "limit"),
]


def test_bad_input_to_the_endpoint(cluster: Cluster, namespace: str, operator: None,
                                   tmp_path: Path) -> None:
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"
    cluster.apply(exp, namespace)
    register(cluster, namespace, {1: write_model_version(tmp_path / "v1", seed=1)})
    mdep = base("ModelDeployment")
    mdep["spec"]["drift"] = {"enabled": False}
    cluster.apply(mdep, namespace)
    st = wait_for(lambda: (s := status(cluster, namespace)).get("phase") == "Serving" and s,
                  timeout=120, what="serving")
    good = json.dumps(payload(make_images(2, seed=1))).encode()
    for body, code, words in BAD_BODIES:
        got, answer = post(st["endpoint"], body)
        assert got == code, (got, answer)
        text = json.dumps(answer)
        assert words.lower() in text.lower(), text
        assert post(st["endpoint"], good)[0] == 200  # and it keeps serving


def test_a_full_request_log_stops_logging_not_serving(
        cluster: Cluster, namespace: str, operator: None, tmp_path: Path) -> None:
    exp = base("Experiment")
    exp["spec"]["flow"]["file"] = "flows/not-here.py"
    cluster.apply(exp, namespace)
    register(cluster, namespace, {1: write_model_version(tmp_path / "v1", seed=1)})
    mdep = base("ModelDeployment")
    mdep["spec"]["drift"] = {"enabled": True, "storage": {"maxBytes": 1048576}}  # ~80 images
    cluster.apply(mdep, namespace)
    st = wait_for(lambda: (s := status(cluster, namespace)).get("phase") == "Serving" and s,
                  timeout=120, what="serving")
    logging_on = wait_for(lambda: condition(cluster.get("mdep", "classifier", namespace),
                                            "RequestLogging"), timeout=60, what="RequestLogging")
    assert (logging_on["status"], logging_on["reason"]) == ("True", "Logging")
    url, feedback = st["endpoint"], st["endpoint"].replace("/predictions", "/feedback")
    metrics_url = url.split("/api/")[0] + "/metrics"
    dropped = 0.0
    for i in range(30):  # labelled batches of 8: nothing unlabelled is left to make room
        images = make_images(8, seed=100 + i)
        code, answer = post(url, json.dumps(payload(images)).encode())
        assert code == 200, answer  # the model's answer, whether or not it was logged
        body = {"puid": answer["meta"]["puid"], "labels": labels_of(images).tolist()}
        assert post(feedback, json.dumps(body).encode())[0] == 200
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        dropped = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("trellis_router_log_dropped_total{"))
        if dropped >= 2:
            break
    assert dropped >= 2 and "trellis_router_log_full 1.0" in text, text
    full = wait_for(lambda: (c := condition(cluster.get("mdep", "classifier", namespace),
                                            "RequestLogging")) and c["status"] == "False" and c,
                    timeout=60, what="RequestLogging False")
    assert full["reason"] == "LogFull" and "predictions are still served" in full["message"]
    obj = cluster.get("mdep", "classifier", namespace)
    assert condition(obj, "Ready")["status"] == "True" and obj["status"]["phase"] == "Serving"
