"""Cluster mode's drift feed: Seldon request-logger CloudEvents, received by any replica,
acknowledged once in the shared inbox, logged by the one consumer (a local-directory
store here; tests/e2e/test_drift_feed_failover.py runs it on S3 with two operators)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from controller.drift_feed import DriftFeed
from controller.objectstore import ObjectStore, ObjectStoreError
from controller.serving.cloudevents import FEEDBACK, REQUEST, RESPONSE, Receiver
from controller.serving.inbox import inbox_prefix
from controller.serving.requestlog_read import RequestLogReader

IMAGES = np.full((2, 64, 64, 3), 0.5).tolist()
REQUEST_BODY = {"data": {"ndarray": IMAGES}}
RESPONSE_BODY = {"data": {"names": ["bad", "good"], "ndarray": [[0.9, 0.1], [0.2, 0.8]]},
                 "meta": {"tags": {"trellis.features": [[0.1] * 10, [0.2] * 10],
                                   "trellis.version": 3}}}


def headers(kind: str, rid: str) -> dict[str, str]:
    return {"Ce-Type": kind, "Ce-Requestid": rid, "Ce-Id": rid, "Ce-Namespace": "farm",
            "Ce-Inferenceservicename": "classifier", "Ce-Endpoint": "canary",
            "Ce-Specversion": "0.3", "Ce-Source": "io.seldon.serving.deployment.classifier"}


def post(path, body, hdrs=None, replica: int = 0):
    async def step(clients):
        resp = await clients[replica].post(path, json=body, headers=hdrs or {})
        return resp.status, await resp.json()
    return step


def run(store_root: Path, steps, replicas: int = 2, store: ObjectStore | None = None,
        made: list[Receiver] | None = None):
    """The steps against ``replicas`` receivers that share one store (appended to
    ``made``, for a step that looks inside them)."""
    async def go():
        receivers = [Receiver(store or ObjectStore(), str(store_root), f"replica-{i}")
                     for i in range(replicas)]
        if made is not None:
            made.extend(receivers)
        clients = [TestClient(TestServer(r.app())) for r in receivers]
        for client in clients:
            await client.start_server()
        try:
            return [await step(clients) for step in steps]
        finally:
            for client in clients:
                await client.close()
            for receiver in receivers:
                await receiver.close()
    return asyncio.run(go())


def consumer(tmp_path: Path, name: str = "active") -> DriftFeed:
    return DriftFeed(ObjectStore(), str(tmp_path / "store"), tmp_path / name, name)


def test_halves_received_by_different_replicas_are_logged_by_the_one_consumer(
        tmp_path: Path) -> None:
    codes = [code for code, _ in run(tmp_path / "store", [
        post("/", RESPONSE_BODY, headers(RESPONSE, "r1"), replica=1),  # response first
        post("/", REQUEST_BODY, headers(REQUEST, "r1"), replica=0),
        post("/feedback/farm/classifier", {"puid": "r1", "labels": [0, 1]}, replica=1),
        post("/", REQUEST_BODY, headers(REQUEST, "r2"), replica=1),  # its response is late
    ])]
    assert codes == [202, 202, 202, 202]  # each acknowledged once it is in the inbox
    feed = consumer(tmp_path)
    state = feed.drain("farm", "classifier", 10_000_000)
    reader = RequestLogReader(tmp_path / "active" / "farm" / "classifier")
    features, versions = reader.recent_features(10)
    assert features.shape == (2, 10) and versions.tolist() == [3, 3]
    assert reader.labelled_count() == 2 and reader.live_accuracy() == 1.0
    assert not state.full and state.used_bytes > 0
    # r2's request waits in the inbox for its response; everything else is gone from it.
    inbox = ObjectStore().list(inbox_prefix(str(tmp_path / "store"), "farm", "classifier"))
    assert len(inbox) == 1
    run(tmp_path / "store", [post("/", RESPONSE_BODY, headers(RESPONSE, "r2"), replica=0)])
    feed.drain("farm", "classifier", 10_000_000)
    assert reader.recent_features(10)[0].shape == (4, 10)
    assert ObjectStore().list(inbox_prefix(str(tmp_path / "store"), "farm", "classifier")) == []
    feed.close()


def test_bad_events_are_refused_at_once(tmp_path: Path) -> None:
    no_features = {"data": {"ndarray": [[0.9, 0.1]]}, "meta": {}}
    results = run(tmp_path / "store", [
        post("/", {"data": {}}, {"Ce-Type": "something.else"}),
        post("/", no_features, headers(RESPONSE, "r2")),
        post("/", {"data": {"ndarray": [[1, 2]]}}, headers(REQUEST, "r2")),
        post("/feedback/farm/classifier", {"puid": "r1"}),
        # no Ce-Requestid: Ce-Id is new per event, so this half could never pair
        post("/", REQUEST_BODY, {k: v for k, v in headers(REQUEST, "r3").items()
                                 if k != "Ce-Requestid"}),
    ])
    assert [code for code, _ in results] == [400, 400, 400, 400, 400]
    assert "CloudEvent" in results[0][1]["status"]["info"]
    assert "trellis.features" in results[1][1]["status"]["info"]
    assert "(n, 64, 64, 3)" in results[2][1]["status"]["info"]
    assert not (tmp_path / "store").exists()  # nothing refused reached the inbox


def test_feedback_sent_through_seldon_is_logged_as_ground_truth(tmp_path: Path) -> None:
    """Seldon's executor logs feedback to its own endpoint as a CloudEvent under a new
    puid; the prediction's puid is in the body's ``response.meta.puid``."""
    feedback = {"request": REQUEST_BODY, "response": {"meta": {"puid": "r1"}},
                "truth": {"data": {"ndarray": [1, 1]}}, "reward": 1}
    run(tmp_path / "store", [
        post("/", REQUEST_BODY, headers(REQUEST, "r1"), replica=0),
        post("/", RESPONSE_BODY, headers(RESPONSE, "r1"), replica=1),
        post("/", feedback, headers(FEEDBACK, "f-new-puid"), replica=0),
    ])
    drops: list[tuple[str, str, str]] = []
    feed = DriftFeed(ObjectStore(), str(tmp_path / "store"), tmp_path / "active", "active",
                     on_drop=lambda *d: drops.append(d), ttl=0.0)
    run(tmp_path / "store", [
        post("/", {**feedback, "response": {"meta": {"puid": "unknown"}}},
             headers(FEEDBACK, "f-2"))])
    feed.drain("farm", "classifier", 10_000_000)
    reader = RequestLogReader(tmp_path / "active" / "farm" / "classifier")
    assert reader.labelled_count() == 2
    assert reader.live_accuracy() == 0.5  # predicted [0, 1], truth [1, 1]
    assert drops == [("farm", "classifier", "unmatched")]  # no such prediction, ever
    feed.close()


def test_feedback_with_a_reward_and_no_truth_is_acknowledged_and_kept_nowhere(
        tmp_path: Path) -> None:
    """Seldon's executor takes feedback without truth and logs it as an event too: a 202
    (its logger counts any other answer as a failure), nothing in the inbox."""
    results = run(tmp_path / "store", [
        post("/", {"request": REQUEST_BODY, "response": {"meta": {"puid": "r1"}},
                   "reward": 1}, headers(FEEDBACK, "f-1")),
        post("/", {"response": {"meta": {"puid": "r1"}}, "reward": "x"},
             headers(FEEDBACK, "f-2")),
    ])
    assert [code for code, _ in results] == [202, 400]
    assert "reward must be a number" in results[1][1]["status"]["info"]
    assert not (tmp_path / "store").exists()


def test_the_store_refusing_a_write_is_no_acknowledgement(tmp_path: Path) -> None:
    class Down(ObjectStore):
        def write(self, uri: str, data: bytes) -> None:
            raise ObjectStoreError("S3 write failed: SlowDown", transient=True)

    results = run(tmp_path / "store", [post("/", REQUEST_BODY, headers(REQUEST, "r1"))],
                  store=Down())
    assert results[0][0] == 503 and "SlowDown" in results[0][1]["status"]["info"]


def test_concurrent_events_share_inbox_writes(tmp_path: Path) -> None:
    """A group commit: events that arrive while a write is under way go in the next one.
    The first write is held until the other 19 events wait behind it: two writes, 1 + 19."""
    started, release = threading.Event(), threading.Event()

    class Held(ObjectStore):
        def write(self, uri: str, data: bytes) -> None:
            if not started.is_set():
                started.set()
                assert release.wait(10), "the test never released the first write"
            super().write(uri, data)

    async def burst(clients):
        first = asyncio.ensure_future(
            clients[0].post("/", json=REQUEST_BODY, headers=headers(REQUEST, "r0")))
        await asyncio.to_thread(started.wait, 10)
        rest = [asyncio.ensure_future(clients[0].post(
            "/", json=REQUEST_BODY, headers=headers(REQUEST, f"r{i}"))) for i in range(1, 20)]
        for _ in range(1000):  # until the 19 are queued behind the held write (10 s at most)
            if sum(len(s.lines) for s in receivers[0]._spools.values()) >= 19:
                break
            await asyncio.sleep(0.01)
        release.set()
        return [r.status for r in await asyncio.gather(first, *rest)]

    receivers: list[Receiver] = []
    [codes] = run(tmp_path / "store", [burst], replicas=1, store=Held(), made=receivers)
    assert codes == [202] * 20
    objects = ObjectStore().list(inbox_prefix(str(tmp_path / "store"), "farm", "classifier"))
    assert sorted(Path(o).read_bytes().count(b"\n") for o in objects) == [1, 19]


def test_a_full_log_drops_records_but_every_event_was_acknowledged(tmp_path: Path) -> None:
    """The full log drops the record, counts it, and says so until a record fits again."""
    drops: list[tuple[str, str, str]] = []
    feed = DriftFeed(ObjectStore(), str(tmp_path / "store"), tmp_path / "active", "active",
                     on_drop=lambda *drop: drops.append(drop))

    def pair(rid: str, replica: int):
        return [post("/", REQUEST_BODY, headers(REQUEST, rid), replica=replica),
                post("/", RESPONSE_BODY, headers(RESPONSE, rid), replica=1 - replica),
                post("/feedback/farm/classifier", {"puid": rid, "labels": [0, 1]},
                     replica=replica)]

    codes = [c for c, _ in run(tmp_path / "store",
                               [s for i in range(8) for s in pair(f"r{i}", i % 2)])]
    full = feed.drain("farm", "classifier", 120_000)  # room for a few labelled pairs
    codes += [c for c, _ in run(tmp_path / "store", pair("after", 0))]
    after = feed.drain("farm", "classifier", 10_000_000)  # room again
    assert codes == [202] * 27
    assert full.full and full.max_bytes == 120_000 and full.writer == "active operator replica"
    assert full.dropped_requests >= 1 and full.dropped_requests == full.dropped_feedback
    assert drops.count(("farm", "classifier", "request")) == full.dropped_requests
    assert drops.count(("farm", "classifier", "feedback")) == full.dropped_feedback
    assert not after.full and after.dropped_requests == full.dropped_requests
    reader = RequestLogReader(tmp_path / "active" / "farm" / "classifier")
    assert reader.labelled_count() == 2 * (8 - full.dropped_requests + 1)
    feed.close()
