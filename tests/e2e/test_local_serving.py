"""Local serving end to end: real seldon-core-microservice processes (from .venv-serving)
behind the real router, driven through LocalServingBackend and Seldon's REST API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.serving import procs
from controller.serving.local import (
    DesiredServing,
    LocalServingBackend,
    PredictorSpec,
    ServingError,
    ServingObserved,
)
from controller.serving.requestlog_read import RequestLogReader
from tests.support.fake_model import (
    labels_of,
    make_images,
    payload,
    png,
    write_model_version,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVING_PYTHON = REPO / ".venv-serving" / "bin" / "python"
PREDICT = "/api/v1.0/predictions"
FEEDBACK = "/api/v1.0/feedback"


def http(
    method: str, url: str, body: bytes | dict[str, Any] | None = None, token: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, decoded JSON or text); HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json", **(extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def info(answer: Any) -> str:
    return str(answer["status"]["info"]) if isinstance(answer, dict) else str(answer)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SERVING_PYTHON.parent / "seldon-core-microservice").exists():
        pytest.skip(f"serving environment missing: create {SERVING_PYTHON.parent.parent}")
    root = tmp_path_factory.mktemp("models")
    write_model_version(root / "1")
    write_model_version(root / "2", seed=1)
    write_model_version(root / "3", fail_fraction=0.5)
    return root


class Harness:
    """A backend plus the deployments a test made, torn down whatever happens."""

    def __init__(self, root: Path, models: Path) -> None:
        self.root, self.models = root, models
        self.backend = self.new_backend()
        self.made: list[tuple[str, str]] = []
        self.groups: set[int] = set()

    def new_backend(self) -> LocalServingBackend:
        return LocalServingBackend(
            self.root / "state", SERVING_PYTHON, REPO / "serving", start_timeout_s=60
        )

    def desired(self, name: str, *predictors: PredictorSpec, **kw: Any) -> DesiredServing:
        kw.setdefault("log_dir", self.root / "log" / name)
        kw.setdefault("max_log_bytes", 50_000_000)
        return DesiredServing("farm", name, list(predictors), **kw)

    def spec(self, name: str, version: int, weight: int, **env: str) -> PredictorSpec:
        return PredictorSpec(name, version, (self.models / str(version)).as_uri(), weight, env)

    def ensure(self, desired: DesiredServing) -> ServingObserved:
        if (desired.namespace, desired.name) not in self.made:
            self.made.append((desired.namespace, desired.name))
        try:
            return asyncio.run(self.backend.ensure(desired))
        finally:
            self.groups |= set(self.pids(desired.name))

    def pids(self, name: str) -> list[int]:
        """Pids (= process groups) recorded for a deployment right now."""
        path = self.root / "state" / "farm" / name / "state.json"
        if not path.exists():
            return []
        raw = json.loads(path.read_text())
        recorded = [*raw["predictors"].values(), *raw["retiring"], raw["router"] or {}]
        return [p["pid"] for p in recorded if p]

    def close(self) -> None:
        """Tear down, then insist every process group ever started is gone (no leaks)."""
        for namespace, name in self.made:
            asyncio.run(self.backend.teardown(namespace, name))
        wait_for(lambda: not any(map(_group_alive, self.groups)), what="process groups to end")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def harness(tmp_path: Path, models: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, models)
    try:
        yield h
    finally:
        h.close()


def metric(endpoint: str, name: str, **labels: str) -> float:
    _, text = http("GET", f"{endpoint}/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_predictions_and_bad_input(harness: Harness) -> None:
    obs = harness.ensure(harness.desired("basic", harness.spec("stable", 1, 100)))
    assert obs.ready, obs
    router = obs.endpoint + PREDICT
    direct = f"http://127.0.0.1:{obs.predictors['stable'].port}{PREDICT}"
    images = make_images(3, seed=5)

    for kind in ("ndarray", "tensor"):
        status, answer = http("POST", router, payload(images, kind))
        assert status == 200, answer
        data = answer["data"]
        assert data["names"] == ["bad", "good"]
        probs = np.asarray(data[kind] if kind == "ndarray" else data[kind]["values"]).reshape(3, 2)
        assert probs.argmax(1).tolist() == labels_of(images).tolist()
        meta = answer["meta"]
        assert len(meta["puid"]) == 36 and meta["tags"]["trellis.version"] == 1
        assert meta["tags"]["trellis.predictor"] == "stable" and meta["routing"]
        assert "trellis.features" not in meta["tags"]  # consumed by the request log

    # The puid: Seldon's executor sends its own in the Seldon-Puid header, which the model
    # server answers with (the request logger filed the prediction under it); a client's
    # own Seldon-Puid is kept by the router, as by the executor.
    status, answer = http("POST", direct, payload(images[:1]), extra={"Seldon-Puid": "exec-1"})
    assert (status, answer["meta"]["puid"]) == (200, "exec-1"), answer
    status, answer = http("POST", router, payload(images[:1]), extra={"Seldon-Puid": "mine-2"})
    assert (status, answer["meta"]["puid"]) == (200, "mine-2"), answer

    # one photo as binData: JSON through the router, or a multipart upload (Seldon's
    # `curl -F binData=@photo.png`) straight to the model server; answered as ndarray
    pixels = np.rint(images[0] * 255).astype(np.uint8)
    want = labels_of(pixels[None].astype(np.float32) / 255).tolist()
    status, answer = http("POST", router, {"binData": base64.b64encode(png(pixels)).decode()})
    assert status == 200 and np.argmax(answer["data"]["ndarray"], 1).tolist() == want, answer
    boundary = "photo"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="binData"; '
            f'filename="p.png"\r\nContent-Type: image/png\r\n\r\n').encode() \
        + png(pixels) + f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(
        direct, data=form, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(upload, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert np.argmax(answer["data"]["ndarray"], 1).tolist() == want, answer

    nan = images[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    big = b'{"data": {"ndarray": [' + b"0.5, " * (2_100_000) + b"0.5]}}"  # ~10 MB
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (payload(np.zeros((1, 32, 32, 3))), 400, "expected shape (N, 64, 64, 3)"),
        (json.dumps(payload(nan)).encode(), 400, "non-finite"),
        ({"data": {"ndarray": []}}, 400, "empty batch"),
        (payload(images[:1] * 2), 400, "must lie in [0, 1]"),
        ({"data": {"ndarray": [[[[0.5]]], [[0.5]]]}}, 400, "ragged"),
        ({"strData": "pumpkin"}, 400, '"data" object'),
        ({"binData": base64.b64encode(b"not a photo").decode()}, 400, "not a PNG or JPEG"),
        ({"binData": base64.b64encode(png(np.zeros((32, 32, 3), np.uint8))).decode()}, 400,
         "expected exactly 64x64"),
        ({"binData": "%%%"}, 400, "not valid base64"),
        (big, 413, "exceeds the limit"),
    ]
    for url in (router, direct):
        for body, code, words in cases:
            status, answer = http("POST", url, body)
            assert (status, words in info(answer)) == (code, True), (url, words, status, answer)
            assert http("POST", url, payload(images[:1]))[0] == 200  # still serving
    assert http("GET", obs.endpoint + "/health/status")[0] == 200
    assert http("GET", obs.endpoint + "/health/ping") == (200, "pong")
    stable = {"predictor": "stable", "version": "1"}
    assert metric(obs.endpoint, "trellis_router_requests_total", code="200", **stable) >= 2
    assert metric(obs.endpoint, "trellis_router_requests_total", code="400", **stable) == 9
    assert metric(obs.endpoint, "trellis_router_rejected_total", code="413") == 1
    assert metric(obs.endpoint, "trellis_router_predictions_total", **stable) >= 6
    _, seldon = http("GET", f"http://127.0.0.1:{_metrics_port(harness, 'basic')}/metrics")
    assert 'trellis_predictions_total{class="good"' in seldon and 'predictor_version="v1"' in seldon


def _metrics_port(harness: Harness, name: str) -> int:
    state = json.loads((harness.root / "state" / "farm" / name / "state.json").read_text())
    return int(state["predictors"]["stable"]["metrics_port"])


def test_weights_feedback_and_version_replacement(harness: Harness) -> None:
    desired = harness.desired("split", harness.spec("stable", 1, 75), harness.spec("canary", 2, 25))
    obs = harness.ensure(desired)
    assert obs.ready, obs
    url = obs.endpoint + PREDICT
    images = make_images(400, seed=7)
    seen: Counter[str] = Counter()
    answers = []
    for i in range(400):
        status, answer = http("POST", url, payload(images[i : i + 1]))
        assert status == 200, answer
        seen[answer["meta"]["tags"]["trellis.predictor"]] += 1
        answers.append(answer)
    assert 60 <= seen["canary"] <= 140 and seen["stable"] + seen["canary"] == 400, seen

    feedback = obs.endpoint + FEEDBACK
    truth = labels_of(images)
    for i in range(10):
        puid = answers[i]["meta"]["puid"]
        if i % 2:
            body = {"puid": puid, "label": int(truth[i])}
        else:
            body = {"response": answers[i], "truth": {"data": {"ndarray": [int(truth[i])]}}}
        status, answer = http("POST", feedback, body)
        assert status == 200 and answer["meta"]["puid"] == puid, answer
    status, answer = http("POST", feedback, {"puid": "0" * 32, "label": 1})
    assert status == 404 and "unknown puid" in info(answer)
    status, answer = http("POST", feedback, {"puid": answers[11]["meta"]["puid"], "label": 7})
    assert status == 400 and "invalid label 7" in info(answer)
    status, answer = http("POST", feedback, {"puid": answers[11]["meta"]["puid"], "labels": [1, 0]})
    assert status == 400 and "1 input(s) but 2 label(s)" in info(answer)
    reader = RequestLogReader(desired.log_dir)
    assert reader.labelled_count() == 10  # acknowledged means on disk
    assert reader.live_accuracy() == 1.0
    wait_for(lambda: len(reader.recent_features(1000)[0]) == 400, what="request log flush")
    feats, versions = reader.recent_features(400)
    assert feats.shape == (400, 8) and set(versions.tolist()) == {1, 2}

    old_canary = obs.predictors["canary"].pid
    obs = harness.ensure(
        harness.desired("split", harness.spec("stable", 1, 50), harness.spec("canary", 3, 50))
    )
    assert obs.ready and obs.predictors["canary"].version == 3, obs
    assert not procs.pid_alive(old_canary)
    codes: Counter[int] = Counter()
    for i in range(60):
        status, answer = http("POST", url, payload(make_images(1, seed=1000 + i)))
        codes[status] += 1
        if status == 500:  # the model's own failure, passed through as Seldon does
            assert "model failed" in info(answer)
    assert codes[200] > 0 and codes[500] > 0 and set(codes) == {200, 500}, codes
    canary = {"predictor": "canary", "version": "3"}
    assert metric(obs.endpoint, "trellis_router_requests_total", code="500", **canary) > 0

    canary_pid = obs.predictors["canary"].pid
    obs = harness.ensure(harness.desired("split", harness.spec("stable", 3, 100)))
    assert obs.ready and "canary" not in obs.predictors
    assert obs.predictors["stable"].pid == canary_pid  # the promoted canary keeps running
    assert list(_group_pids(harness, "split")) == [canary_pid]

    slow = harness.spec("stable", 3, 100, TRELLIS_FAULT="latency_ms=300")
    obs = harness.ensure(harness.desired("split", slow))
    assert obs.ready and obs.predictors["stable"].pid != canary_pid
    started = time.perf_counter()
    status, _ = http("POST", url, payload(make_images(1, seed=1)))
    assert status in (200, 500) and time.perf_counter() - started >= 0.3


def _group_pids(harness: Harness, name: str) -> Iterator[int]:
    """Live model-server pids of a deployment (the router excluded)."""
    state = json.loads((harness.root / "state" / "farm" / name / "state.json").read_text())
    for proc in [*state["predictors"].values(), *state["retiring"]]:
        if procs.pid_alive(proc["pid"]):
            yield proc["pid"]


def test_auth_and_token_rotation(harness: Harness) -> None:
    desired = harness.desired("secure", harness.spec("stable", 1, 100), auth_token="first-token")
    obs = harness.ensure(desired)
    url, body = obs.endpoint + PREDICT, payload(make_images(1, seed=2))
    assert http("POST", url, body)[0] == 401
    assert http("POST", url, body, token="nope")[0] == 403
    status, answer = http("POST", url, body, token="first-token")
    assert status == 200
    fb = {"puid": answer["meta"]["puid"], "label": 1}
    assert http("POST", obs.endpoint + FEEDBACK, fb)[0] == 401
    assert http("POST", obs.endpoint + FEEDBACK, fb, token="first-token")[0] == 200
    assert http("GET", obs.endpoint + "/health/status")[0] == 200  # probes need no token
    # SeldonClient's SeldonCallCredentials(token=...) sends the token as X-Auth-Token
    assert http("POST", url, body, extra={"X-Auth-Token": "first-token"})[0] == 200
    assert http("POST", url, body, extra={"X-Auth-Token": "nope"})[0] == 403

    directory = harness.root / "state" / "farm" / "secure"
    assert stat.S_IMODE(os.stat(directory / "auth-token").st_mode) == 0o600
    router_pid = json.loads((directory / "state.json").read_text())["router"]["pid"]
    desired.auth_token = "second-token"
    harness.ensure(desired)
    assert http("POST", url, body, token="first-token")[0] == 403
    assert http("POST", url, body, token="second-token")[0] == 200
    assert json.loads((directory / "state.json").read_text())["router"]["pid"] == router_pid
    for path in directory.rglob("*"):
        if path.is_file() and path.name != "auth-token":
            content = path.read_bytes()
            assert b"first-token" not in content and b"second-token" not in content, path
    assert "second-token" not in repr(desired)


def test_reattach_after_dropping_the_backend(harness: Harness) -> None:
    desired = harness.desired("durable", harness.spec("stable", 1, 100))
    first = harness.ensure(desired)
    harness.backend = harness.new_backend()  # an operator restart
    observed = asyncio.run(harness.backend.observe("farm", "durable"))
    assert observed is not None and observed.ready and observed.endpoint == first.endpoint
    again = harness.ensure(desired)
    assert again.endpoint == first.endpoint
    assert again.predictors["stable"].pid == first.predictors["stable"].pid

    state_file = harness.root / "state" / "farm" / "durable" / "state.json"
    os.kill(json.loads(state_file.read_text())["router"]["pid"], signal.SIGKILL)
    os.kill(first.predictors["stable"].pid, signal.SIGKILL)
    wait_for(lambda: not procs.pid_alive(first.predictors["stable"].pid), what="kill")
    healed = harness.ensure(desired)
    assert healed.ready and healed.endpoint == first.endpoint  # same port after a restart
    wait_for(lambda: not _group_alive(first.predictors["stable"].pid), what="orphans reaped")
    assert healed.predictors["stable"].pid != first.predictors["stable"].pid
    assert "exited and was restarted" in healed.predictors["stable"].message
    assert http("POST", healed.endpoint + PREDICT, payload(make_images(1)))[0] == 200
    assert asyncio.run(harness.backend.observe("farm", "nothing-here")) is None


def test_a_server_that_cannot_start_reports_why(harness: Harness, tmp_path: Path) -> None:
    broken = PredictorSpec("stable", 9, (tmp_path / "missing").as_uri(), 100)
    typo = harness.spec("canary", 1, 0, TRELLIS_FAULT="explode=1")
    obs = harness.ensure(harness.desired("broken", broken, typo))
    assert not obs.ready and not obs.predictors["stable"].healthy
    assert "no model.pt" in obs.predictors["stable"].message
    assert "TRELLIS_FAULT: cannot use 'explode=1'" in obs.predictors["canary"].message
    assert http("POST", obs.endpoint + PREDICT, payload(make_images(1)))[0] == 503


def test_storage_bound_flood(harness: Harness) -> None:
    bound = 700_000  # about 55 logged images
    desired = harness.desired("flood", harness.spec("stable", 1, 100), max_log_bytes=bound)
    obs = harness.ensure(desired)
    url = obs.endpoint + PREDICT
    reader = RequestLogReader(desired.log_dir)
    for i in range(120):  # unlabelled: the oldest make room, nothing is dropped
        assert http("POST", url, payload(make_images(1, seed=i)))[0] == 200
        assert reader.disk_bytes() <= bound
    assert metric(obs.endpoint, "trellis_router_log_dropped_total") == 0
    acknowledged, dropped_at = 0, None
    for i in range(100):  # every request labelled: room runs out, serving does not stop
        status, answer = http("POST", url, payload(make_images(1, seed=500 + i)))
        assert status == 200, answer
        label = {"puid": answer["meta"]["puid"], "label": 1}
        status, fed = http("POST", obs.endpoint + FEEDBACK, label)
        assert status == 200, fed  # a label for a request the log dropped is dropped too
        if dropped_at is None and metric(obs.endpoint, "trellis_router_log_dropped_total"):
            dropped_at = i
        acknowledged += fed["meta"]["tags"].get("trellis.logged", True)
    assert dropped_at is not None and 20 <= acknowledged <= 60, (dropped_at, acknowledged)
    assert reader.disk_bytes() <= bound
    assert reader.labelled_count() == acknowledged  # nothing acknowledged was lost
    assert metric(obs.endpoint, "trellis_router_log_full") == 1
    assert metric(obs.endpoint, "trellis_router_log_dropped_total", kind="request") >= 1
    assert metric(obs.endpoint, "trellis_router_rejected_total") == 0  # no request refused
    assert http("GET", obs.endpoint + "/health/ping")[0] == 200


def test_an_invalid_desire_is_refused_before_anything_starts(harness: Harness) -> None:
    with pytest.raises(ServingError, match="name must be a DNS label"):
        harness.ensure(harness.desired("refused", harness.spec("Stable", 1, 100)))
    with pytest.raises(ServingError, match="max_log_bytes"):
        harness.ensure(harness.desired("refused", harness.spec("stable", 1, 100), max_log_bytes=0))
    assert not (harness.root / "state" / "farm" / "refused").exists()
