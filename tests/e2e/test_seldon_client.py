"""Seldon's own ``SeldonClient`` against local mode: real seldon-core-microservice
processes behind the real router, reached as a Seldon user reaches a deployment — the
``seldon`` gateway at the root, ``ambassador`` and ``istio`` at ``/seldon/<ns>/<name>/``.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from controller.serving.requestlog_read import RequestLogReader, chunk_paths, read_chunk
from tests.e2e import test_local_serving as local
from tests.e2e.test_local_serving import PREDICT, SERVING_PYTHON, Harness, http, info, metric
from tests.support.fake_model import labels_of, make_images, payload

pytestmark = pytest.mark.e2e

CALLS = Path(__file__).resolve().parents[1] / "support" / "seldon_client_calls.py"
BIN_CALLS = CALLS.with_name("seldon_client_bindata.py")
COMBOS = [(g, k) for g in ("seldon", "ambassador", "istio") for k in ("ndarray", "tensor")]
models = local.models  # the same model versions (module-scoped, so written once here)
harness = local.harness


def headers(url: str, body: dict) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_seldon_client_predicts_and_sends_feedback_through_every_gateway(
        harness: Harness, tmp_path: Path) -> None:
    desired = harness.desired("clients", harness.spec("stable", 1, 100))
    obs = harness.ensure(desired)
    assert obs.ready, obs
    images = make_images(2, seed=11)
    labels = labels_of(images)
    np.save(tmp_path / "images.npy", images)
    host = obs.endpoint.split("://", 1)[1].rstrip("/")
    run = subprocess.run(
        [str(SERVING_PYTHON), str(CALLS), host, "farm", "clients", str(tmp_path / "images.npy"),
         json.dumps(labels.tolist())],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert [(e["gateway"], e["kind"]) for e in report] == COMBOS
    puids = set()
    for entry in report:
        assert entry["success"], entry
        data = entry["response"]["data"]
        raw = data["ndarray"] if entry["kind"] == "ndarray" else data["tensor"]["values"]
        assert np.asarray(raw).reshape(2, 2).argmax(1).tolist() == labels.tolist(), entry
        puid = entry["response"]["meta"]["puid"]
        feedback = entry["feedback"]
        assert feedback["success"], feedback  # ndarray and tensor truth alike
        assert feedback["response"]["meta"]["puid"] == puid
        assert entry["reward_only"]["success"], entry  # as Seldon's executor takes it
        puids.add(puid)
    assert len(puids) == 6
    reader = RequestLogReader(desired.log_dir)
    assert reader.labelled_count() == 12  # 6 requests x 2 images, each one labelled
    assert metric(obs.endpoint, "trellis_router_feedback_total", outcome="correct") == 12
    assert metric(obs.endpoint, "trellis_router_feedback_without_truth_total") == 6

    # the puid travels in Seldon's header too, on the ingress path as at the root
    for path in (PREDICT, "/seldon/farm/clients" + PREDICT):
        status, got = headers(obs.endpoint + path, payload(images[:1]))
        assert status == 200 and len(got["Seldon-Puid"]) == 36, got
    status, answer = http("POST", obs.endpoint + "/seldon/farm/other" + PREDICT,
                          payload(images[:1]))
    assert status == 404 and "farm/clients" in info(answer)

    for base in (obs.endpoint, obs.endpoint + "/seldon/farm/clients"):
        status, health = http("GET", base + "/api/v1.0/health/status")
        assert status == 200 and health["predictors"]["stable"]["healthy"], health
        status, meta = http("GET", base + "/api/v1.0/metadata")
        assert status == 200 and meta["name"] == "stable", meta
        model = meta["models"]["classifier"]
        assert model["name"] == "pumpkin-classifier" and model["versions"] == ["1"]
        assert meta["graphinputs"] == model["inputs"]


def test_a_model_failure_keeps_its_status(harness: Harness) -> None:
    faulty = harness.spec("stable", 1, 100, TRELLIS_FAULT="error_rate=1")
    obs = harness.ensure(harness.desired("faulty", faulty))
    assert obs.ready, obs
    url = obs.endpoint + "/seldon/farm/faulty" + PREDICT
    status, answer = http("POST", url, payload(make_images(1)))
    assert status == 500 and "injected fault" in info(answer), answer  # as the executor does
    assert headers(url, payload(make_images(1)))[0] == 500
    # malformed input is still the client's 4xx, decided before the model runs
    assert http("POST", url, b"{oops")[0] == 400
    status, answer = http("POST", url, payload(np.zeros((1, 8, 8, 3))))
    assert status == 400 and "expected shape" in info(answer)
    stable = {"predictor": "stable", "version": "1"}
    assert metric(obs.endpoint, "trellis_router_requests_total", code="500", **stable) == 2


def test_seldon_client_bin_data_png_gets_the_ndarray_answer(
        harness: Harness, tmp_path: Path) -> None:
    """A photo sent as PNG ``binData`` is classed as the same pixels sent as ``ndarray``
    are, gets drift features, and lands in the request log as those pixels."""
    desired = harness.desired("photos", harness.spec("stable", 1, 100))
    obs = harness.ensure(desired)
    assert obs.ready, obs
    pixels = np.rint(make_images(4, seed=23) * 255.0).astype(np.uint8)
    labels = labels_of(pixels.astype(np.float32) / 255.0)
    assert set(labels.tolist()) == {0, 1}  # both classes, so a constant answer fails
    np.save(tmp_path / "pixels.npy", pixels)
    host = obs.endpoint.split("://", 1)[1].rstrip("/")
    run = subprocess.run(
        [str(SERVING_PYTHON), str(BIN_CALLS), host, "farm", "photos",
         str(tmp_path / "pixels.npy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert len(report) == 4
    for entry, label in zip(report, labels, strict=True):
        assert entry["bin_success"] and entry["nd_success"], entry
        sent, plain = entry["bin"], entry["ndarray"]
        assert np.argmax(sent["data"]["ndarray"][0]) == label, entry
        np.testing.assert_allclose(sent["data"]["ndarray"], plain["data"]["ndarray"],
                                   rtol=1e-6)
        assert sent["data"]["names"] == ["bad", "good"]
    reader = RequestLogReader(desired.log_dir)
    deadline = time.monotonic() + 30  # the router flushes its log buffer every 2 s
    while len(reader.recent_features(100)[0]) < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    feats, _ = reader.recent_features(100)
    assert len(feats) == 8 and np.isfinite(feats).all() and feats.shape[1] > 0, feats.shape
    assert np.allclose(feats[0::2], feats[1::2], atol=1e-5)  # the drift features agree
    # each photo was logged twice (binData, then ndarray) as the same uint8 pixels
    chunks = [read_chunk(path, ("x",)) for _, path in chunk_paths(desired.log_dir)]
    logged = np.concatenate([c[0] for c in chunks if c is not None])
    assert [p.tobytes() for p in logged] == [p.tobytes() for p in np.repeat(pixels, 2, 0)]
