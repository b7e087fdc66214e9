"""The executor stand-in's series against Seldon 1.17.1's (seldon-contract.md), the tests'
Prometheus configuration, and how its binary is fetched."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.devcluster import binaries
from controller.devcluster import prometheus as server
from controller.processes import free_port
from tests.support import prometheus
from tests.support.executor_metrics import (
    BUCKETS,
    SERVER_METRIC,
    Executor,
    ServerMetrics,
    go_float,
    predictor_labels,
    serve,
)

PREDICTOR = {"name": "canary", "labels": {"version": "v2"}, "annotations": {"version": "v2"},
             "graph": {"name": "classifier"}}


class _Model(BaseHTTPRequestHandler):
    """A model server that fails what asks for it and acknowledges feedback."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 500 if b"fail" in body else 200
        answer = json.dumps({"path": self.path, "puid": self.headers.get("Seldon-Puid")})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())


@pytest.fixture
def model() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def executor(model: str) -> Iterator[str]:
    port = free_port()
    server = serve(Executor("classifier", PREDICTOR, model), "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_version_label_is_the_predictors_annotation() -> None:
    assert predictor_labels("classifier", PREDICTOR) == {
        "deployment_name": "classifier", "predictor_name": "canary", "predictor_version": "v2"}
    only_label = {"name": "stable", "labels": {"version": "v1"}}
    assert predictor_labels("classifier", only_label)["predictor_version"] == ""


def test_histogram_buckets_labels_and_summary_as_the_executor_writes_them() -> None:
    metrics = ServerMetrics("classifier", PREDICTOR)
    assert metrics.exposition() == ""  # no request yet: no series, as a Go vector
    for seconds in (0.003, 0.02, 0.02, 0.3):
        metrics.observe("predictions", "POST", 200, seconds)
    metrics.observe("predictions", "POST", 500, 0.01)
    text = metrics.exposition()
    assert 'le="0.005"' in text and 'le="1"' in text and 'le="10"' in text  # Go's numbers
    found = samples(text)
    base = {"deployment_name": "classifier", "predictor_name": "canary",
            "predictor_version": "v2", "service": "predictions", "method": "post"}
    ok = {**base, "code": "200"}
    les = [go_float(b) for b in BUCKETS] + ["+Inf"]
    cumulative = [found[(f"{SERVER_METRIC}_bucket", frozenset({**ok, "le": le}.items()))]
                  for le in les]
    assert cumulative == [1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4]
    assert found[(f"{SERVER_METRIC}_count", frozenset(ok.items()))] == 4
    assert found[(f"{SERVER_METRIC}_sum", frozenset(ok.items()))] == pytest.approx(0.343)
    assert found[(f"{SERVER_METRIC}_count",
                  frozenset({**base, "code": "500"}.items()))] == 1
    quantiles = {q: found[(f"{SERVER_METRIC}_summary", frozenset({**ok, "quantile": q}.items()))]
                 for q in ("0.5", "0.99", "1")}
    assert quantiles == {"0.5": 0.02, "0.99": 0.3, "1": 0.3}
    assert found[(f"{SERVER_METRIC}_summary_count", frozenset(ok.items()))] == 4


def test_the_proxy_counts_each_service_and_passes_answers_through(executor: str) -> None:
    status, body, headers = call("POST", executor + "/api/v1.0/predictions", b'{"ok": 1}')
    assert status == 200 and json.loads(body)["path"] == "/predict"
    assert headers["Seldon-Puid"] == json.loads(body)["puid"]  # the executor sets one
    assert call("POST", executor + "/api/v1.0/predictions", b'{"fail": 1}')[0] == 500
    assert call("POST", executor + "/api/v0.1/predictions", b'{"ok": 1}')[0] == 200
    status, body, _ = call("POST", executor + "/api/v1.0/feedback", b'{"reward": 1}')
    assert status == 200 and json.loads(body)["path"] == "/send-feedback"
    assert call("GET", executor + "/api/v1.0/health/status")[0] == 200
    assert call("GET", executor + "/ready")[0] == 200
    assert call("GET", executor + "/nowhere")[0] == 404
    found = samples(call("GET", executor + "/prometheus")[1].decode())
    counts = {(dict(labels)["service"], dict(labels)["method"], dict(labels)["code"]): v
              for (name, labels), v in found.items() if name == f"{SERVER_METRIC}_count"}
    assert counts == {("predictions", "post", "200"): 2, ("predictions", "post", "500"): 1,
                      ("feedback", "post", "200"): 1, ("status", "get", "200"): 1}


def test_an_unreachable_model_is_a_counted_500() -> None:
    # the model's port stays bound and never listens: refused, and no one else's (two
    # free_port() answers in a row may be the same port, the executor's own)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    upstream = hole.getsockname()[1]
    server = serve(Executor("classifier", PREDICTOR, f"http://127.0.0.1:{upstream}",
                            timeout_s=2), "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        url = f"http://127.0.0.1:{port}"
        status, body, _ = call("POST", url + "/api/v1.0/predictions", b"{}")
        assert status == 500 and json.loads(body)["status"]["status"] == "FAILURE"
        assert call("GET", url + "/ready")[0] == 503
        assert 'code="500"' in call("GET", url + "/prometheus")[1].decode()
    finally:
        server.shutdown()
        server.server_close()
        hole.close()


def test_prometheus_scrapes_file_sd_targets_every_second_on_loopback(tmp_path: Path) -> None:
    cfg = json.loads(server.config(tmp_path))
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["global"]["query_log_file"] == str(tmp_path / "queries.jsonl")
    [job] = cfg["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": [str(tmp_path / "targets" / "*.json")],
                                       "refresh_interval": "1s"}]
    target = prometheus.Target("127.0.0.1:9", "/prometheus", {"kubernetes_namespace": "farm"})
    assert target.group() == {"targets": ["127.0.0.1:9"], "labels": {
        "kubernetes_namespace": "farm", "__metrics_path__": "/prometheus"}}
    cmd = server.command("/bin/prometheus", tmp_path, 19090)
    assert "--web.listen-address=127.0.0.1:19090" in cmd
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in cmd
    assert not any("lifecycle" in arg or "admin" in arg for arg in cmd)


def test_prometheus_is_debians_package_unpacked_into_its_own_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    policy = ("prometheus:\n  Installed: (none)\n  Candidate: 2.42.0+ds-5+deb12u1\n"
              "  Version table:\n")
    assert binaries.apt_candidate(policy) == "2.42.0+ds-5+deb12u1"
    assert binaries.apt_candidate("prometheus:\n  Candidate: (none)\n") is None
    assert binaries.upstream_version("2.42.0+ds-5+deb12u1") == binaries.PROMETHEUS_VERSION
    assert binaries.upstream_version("1:2.45.3-1") == "2.45.3"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TEST_ASSET_PROMETHEUS", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    assert binaries.prometheus_cache_dir().name == f"prometheus-{binaries.PROMETHEUS_VERSION}"
    assert binaries.locate("prometheus") is None
    binary = binaries.prometheus_cache_dir() / "bin" / "prometheus"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert binaries.ensure_prometheus() == binary  # found: nothing fetched
