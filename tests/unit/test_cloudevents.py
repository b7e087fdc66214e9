"""Cluster mode's drift feed: Seldon request-logger CloudEvents into the request log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from controller.serving.cloudevents import FEEDBACK, REQUEST, RESPONSE, Receiver
from controller.serving.requestlog_read import RequestLogReader

IMAGES = np.full((2, 64, 64, 3), 0.5).tolist()


def headers(kind: str, rid: str) -> dict[str, str]:
    return {"Ce-Type": kind, "Ce-Requestid": rid, "Ce-Id": rid, "Ce-Namespace": "farm",
            "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "canary",
            "Ce-Specversion": "0.3", "Ce-Source": "io.seldon.serving.deployment.classifier"}


RESPONSE_BODY = {"data": {"names": ["bad", "good"], "ndarray": [[0.9, 0.1], [0.2, 0.8]]},
                 "meta": {"tags": {"trellis.features": [[0.1] * 10, [0.2] * 10],
                                   "trellis.version": 3}}}


def run(root: Path, steps):
    async def go():
        receiver = Receiver(root)
        async with TestClient(TestServer(receiver.app())) as client:
            out = [await step(client) for step in steps]
        receiver.close()
        return out
    return asyncio.run(go())


def post(path, body, hdrs=None):
    async def step(client):
        resp = await client.post(path, json=body, headers=hdrs or {})
        return resp.status, await resp.json()
    return step


def test_request_and_response_are_joined_into_one_logged_row(tmp_path: Path) -> None:
    results = run(tmp_path, [
        post("/", RESPONSE_BODY, headers(RESPONSE, "r1")),   # the response may come first
        post("/", {"data": {"ndarray": IMAGES}}, headers(REQUEST, "r1")),
        post("/feedback/farm/classifier", {"puid": "r1", "labels": [0, 1]}),
        post("/feedback/farm/classifier", {"puid": "nope", "label": 1}),
        post("/feedback/farm/classifier", {"puid": "r1", "label": [7, 1]}),
    ])
    assert [code for code, _ in results] == [202, 201, 200, 404, 400]
    reader = RequestLogReader(tmp_path / "farm" / "classifier")
    features, versions = reader.recent_features(10)
    assert features.shape == (2, 10) and versions.tolist() == [3, 3]
    assert reader.labelled_count() == 2
    assert reader.live_accuracy() == 1.0


def test_bad_events_are_refused_clearly(tmp_path: Path) -> None:
    no_features = {"data": {"ndarray": [[0.9, 0.1]]}, "meta": {}}
    results = run(tmp_path, [
        post("/", {"data": {}}, {"Ce-Type": "something.else"}),
        post("/", no_features, headers(RESPONSE, "r2")),
        post("/", {"data": {"ndarray": IMAGES[:1]}}, headers(REQUEST, "r2")),
    ])
    assert results[0][0] == 400 and "CloudEvent" in results[0][1]["status"]["info"]
    assert results[2][0] == 400 and "trellis.features" in results[2][1]["status"]["info"]


def test_feedback_sent_through_seldon_is_logged_as_ground_truth(tmp_path: Path) -> None:
    """Seldon's executor logs feedback to its own endpoint as a CloudEvent under a new
    puid; the prediction's puid is in the body's ``response.meta.puid``."""
    feedback = {"request": {"data": {"ndarray": IMAGES}},
                "response": {"meta": {"puid": "r1"}},
                "truth": {"data": {"ndarray": [1, 1]}}, "reward": 1}
    results = run(tmp_path, [
        post("/", {"data": {"ndarray": IMAGES}}, headers(REQUEST, "r1")),
        post("/", RESPONSE_BODY, headers(RESPONSE, "r1")),
        post("/", feedback, headers(FEEDBACK, "f-new-puid")),
        post("/", {**feedback, "response": {"meta": {"puid": "unknown"}}},
             headers(FEEDBACK, "f-2")),
    ])
    assert [code for code, _ in results] == [202, 201, 200, 404]
    reader = RequestLogReader(tmp_path / "farm" / "classifier")
    assert reader.labelled_count() == 2
    assert reader.live_accuracy() == 0.5  # predicted [0, 1], truth [1, 1]


def test_a_full_log_drops_records_but_acknowledges_every_event(tmp_path: Path) -> None:
    """Seldon's executor must see no failure for a prediction it already answered: the
    full log drops the record (200), counts it, and says so until a record fits again."""
    drops: list[tuple[str, str, str]] = []

    async def go():
        receiver = Receiver(tmp_path, on_drop=lambda *drop: drops.append(drop))
        receiver.set_bound("farm", "classifier", 120_000)  # a few labelled pairs
        codes: list[int] = []
        async with TestClient(TestServer(receiver.app())) as client:
            async def pair(rid: str) -> None:
                for kind, body in ((REQUEST, {"data": {"ndarray": IMAGES}}),
                                   (RESPONSE, RESPONSE_BODY)):
                    resp = await client.post("/", json=body, headers=headers(kind, rid))
                    codes.append(resp.status)
                resp = await client.post("/feedback/farm/classifier",
                                         json={"puid": rid, "labels": [0, 1]})
                codes.append(resp.status)
            for i in range(8):
                await pair(f"r{i}")
            full = await asyncio.to_thread(receiver.log_state, "farm", "classifier")
            receiver.set_bound("farm", "classifier", 10_000_000)  # room again
            await pair("after")
            after = await asyncio.to_thread(receiver.log_state, "farm", "classifier")
        receiver.close()
        return codes, full, after

    codes, full, after = asyncio.run(go())
    assert all(200 <= code < 300 for code in codes), codes
    assert full.full and full.max_bytes == 120_000 and full.writer == "request-log receiver"
    assert full.dropped_requests >= 1 and full.dropped_requests == full.dropped_feedback
    assert drops.count(("farm", "classifier", "request")) == full.dropped_requests
    assert drops.count(("farm", "classifier", "feedback")) == full.dropped_feedback
    assert not after.full and after.dropped_requests == full.dropped_requests
    reader = RequestLogReader(tmp_path / "farm" / "classifier")
    assert reader.labelled_count() == 2 * (8 - full.dropped_requests + 1)


def test_log_state_of_a_deployment_never_heard_from(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, max_bytes=5_000_000)
    state = receiver.log_state("farm", "quiet")
    assert not state.full and (state.used_bytes, state.max_bytes) == (0, 5_000_000)
    receiver.forget("farm", "quiet")  # nothing open: nothing to close


def test_a_trickle_reaches_the_drift_monitor_without_filling_a_chunk(tmp_path: Path) -> None:
    """One logged prediction stays buffered only until its flush deadline, not until 64
    rows have come: the receiver flushes due buffers while it runs."""
    async def wait_visible(client):
        reader = RequestLogReader(tmp_path / "farm" / "classifier")
        for _ in range(100):
            if len(reader.recent_features(10)[0]):
                return len(reader.recent_features(10)[0])
            await asyncio.sleep(0.1)
        return 0

    results = run(tmp_path, [
        post("/", {"data": {"ndarray": IMAGES}}, headers(REQUEST, "r1")),
        post("/", RESPONSE_BODY, headers(RESPONSE, "r1")),
        wait_visible,
    ])
    assert results[-1] == 2, results
