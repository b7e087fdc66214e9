"""The drift inbox's one consumer: pairing decided as a pure function, and the log's copy
in the store surviving the consumer (a local-directory store; the e2e test runs S3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.drift_feed import DriftFeed, Released
from controller.objectstore import ObjectStore, ObjectStoreError
from controller.serving import inbox
from controller.serving.inbox import FEEDBACK, REQUEST, RESPONSE, Record, plan_drain
from controller.serving.requestlog_read import RequestLogReader
from controller.settings import Settings


def rec(kind: str, rid: str, ts: float, obj: str = "o1", index: int = 0) -> Record:
    return Record(obj, index, kind, rid, ts, {})


def never(_: str) -> bool:
    return False


# ------------------------------------------------------------------ plan_drain (pure)
def test_halves_pair_whatever_object_and_order_they_came_in() -> None:
    plan = plan_drain([rec(RESPONSE, "a", 1.0, "o2"), rec(REQUEST, "a", 2.0, "o1"),
                       rec(REQUEST, "b", 3.0, "o1", 1)], never, now=10.0, ttl=60.0)
    assert [(q.rid, q.obj, r.obj) for q, r in plan.pairs] == [("a", "o1", "o2")]
    assert [r.rid for r in plan.waiting] == ["b"] and not plan.expired


@pytest.mark.parametrize(("records", "settled", "expect"), [
    # a half of a prediction already logged (an earlier drain died before deleting)
    ([rec(REQUEST, "a", 1.0)], {"a"}, {"duplicates": ["a"]}),
    # the same half twice: one pair, one duplicate
    ([rec(REQUEST, "a", 1.0), rec(REQUEST, "a", 1.5, index=1), rec(RESPONSE, "a", 2.0)],
     set(), {"pairs": ["a"], "duplicates": ["a"]}),
    # a request whose response never comes (the model failed): given up after the TTL
    ([rec(REQUEST, "a", 1.0), rec(REQUEST, "b", 95.0)], set(),
     {"expired": ["a"], "waiting": ["b"]}),
    # feedback: recorded with its pair or after it was logged; waits for one otherwise
    ([rec(FEEDBACK, "a", 0.5), rec(REQUEST, "a", 1.0), rec(RESPONSE, "a", 2.0),
      rec(FEEDBACK, "old", 1.0), rec(FEEDBACK, "c", 99.0), rec(FEEDBACK, "d", 1.0)], {"old"},
     {"pairs": ["a"], "feedback": ["a", "old"], "waiting": ["c"], "expired": ["d"]}),
])
def test_plan(records: list[Record], settled: set[str], expect: dict[str, list[str]]) -> None:
    plan = plan_drain(records, settled.__contains__, now=100.0, ttl=60.0)
    got = {"pairs": [q.rid for q, _ in plan.pairs], "feedback": [r.rid for r in plan.feedback],
           "duplicates": [r.rid for r in plan.duplicates],
           "expired": [r.rid for r in plan.expired], "waiting": [r.rid for r in plan.waiting]}
    assert {k: v for k, v in got.items() if v} == expect
    assert len(plan.dealt_with()) + len(plan.waiting) == len(records)


def test_feedback_is_applied_after_its_pair_in_time_order() -> None:
    plan = plan_drain([rec(FEEDBACK, "a", 1.5), rec(REQUEST, "a", 1.0), rec(RESPONSE, "a", 2.0),
                       rec(REQUEST, "b", 0.5), rec(RESPONSE, "b", 0.6)], never, now=3.0)
    assert [(r.kind, r.rid) for r, _ in plan.in_order()] == [
        (REQUEST, "b"), (REQUEST, "a"), (FEEDBACK, "a")]


def test_an_object_goes_once_every_event_in_it_is_dealt_with() -> None:
    records = {"o1": [rec(REQUEST, "a", 1.0), rec(REQUEST, "b", 1.0, index=1)],
               "o2": [rec(RESPONSE, "a", 1.0, "o2")]}
    assert inbox.finished_objects(records, {"o1": {0}, "o2": {0}}) == ["o2"]
    assert inbox.finished_objects(records, {"o1": {0, 1}, "o2": {0}}) == ["o1", "o2"]


def test_inbox_lines_round_trip() -> None:
    x = np.arange(2 * 64 * 64 * 3, dtype=np.uint8).reshape(2, 64, 64, 3)
    data = (inbox.request_line("p1", 1.0, x)
            + inbox.response_line("p1", 2.0, 4, np.ones((2, 3)), [0, 1])
            + b"not json\n" + inbox.feedback_line("p1", 3.0, [1, 1]))
    records, bad = inbox.decode_object("s3://b/o", data)
    assert bad == 1 and [r.kind for r in records] == [REQUEST, RESPONSE, FEEDBACK]
    assert (records[0].images() == x).all() and records[1].data["pred"] == [0, 1]
    assert [r.index for r in records] == [0, 1, 3]
    with pytest.raises(ValueError, match="uint8"):
        inbox.request_line("p1", 1.0, x.astype(np.float32))


def test_inbox_object_names_sort_by_time_and_never_collide() -> None:
    a = inbox.inbox_object("s3://b/rl", "farm", "clf", time_ns=5, replica="pod/a b", seq=1)
    b = inbox.inbox_object("s3://b/rl", "farm", "clf", time_ns=10, replica="pod-b", seq=0)
    assert a.startswith("s3://b/rl/inbox/farm/clf/") and a.endswith("-pod_a_b-000001.jsonl")
    assert a < b


# ------------------------------------------------------------------ the consumer
def put(root: Path, name: str, *lines: bytes) -> None:
    ObjectStore().write(str(root / "inbox" / "farm" / "clf" / name), b"".join(lines))


def prediction(rid: str, ts: float, label: int | None = None) -> list[bytes]:
    x = np.full((1, 64, 64, 3), 7, dtype=np.uint8)
    lines = [inbox.request_line(rid, ts, x),
             inbox.response_line(rid, ts, 1, np.array([[ts, 1.0]]), [1])]
    return lines + ([inbox.feedback_line(rid, ts, [label])] if label is not None else [])


def rows(local: Path) -> list[float]:
    features, _ = RequestLogReader(local / "farm" / "clf").recent_features(1000)
    return sorted(float(f[0]) for f in features)


def test_a_new_consumer_adopts_the_log_and_drains_what_is_left(tmp_path: Path) -> None:
    """The active replica dies (no release, no goodbye): the next one has every prediction
    it logged, with labels, and logs what was still in the inbox."""
    store = tmp_path / "store"
    first = DriftFeed(ObjectStore(), str(store), tmp_path / "a", "replica-a")
    put(store, "1-a-0.jsonl", *prediction("p1", 1.0, label=0), *prediction("p2", 2.0))
    first.drain("farm", "clf", 10_000_000)
    put(store, "2-b-0.jsonl", *prediction("p3", 3.0), prediction("p4", 4.0)[0])
    put(store, "3-a-1.jsonl", prediction("p4", 4.0)[1])
    assert rows(tmp_path / "a") == [1.0, 2.0]

    second = DriftFeed(ObjectStore(), str(store), tmp_path / "b", "replica-b")
    second.drain("farm", "clf", 10_000_000)
    assert rows(tmp_path / "b") == [1.0, 2.0, 3.0, 4.0]
    reader = RequestLogReader(tmp_path / "b" / "farm" / "clf")
    assert reader.labelled_count() == 1 and reader.live_accuracy() == 0.0
    assert ObjectStore().list(str(store / "inbox")) == []
    copies = ObjectStore().list(str(store / "log" / "farm" / "clf"))
    assert copies and all("-replica-b/" in c for c in copies)  # a's copy was replaced

    # a's process resumes later: its daemon stopped meanwhile, so it adopts again.
    first.release("farm", "clf")
    first.drain("farm", "clf", 10_000_000)
    assert rows(tmp_path / "a") == [1.0, 2.0, 3.0, 4.0]
    first.close()
    second.close()


def test_a_drain_cut_short_loses_nothing_and_logs_nothing_twice(tmp_path: Path) -> None:
    """The inbox object goes only after the log's copy is in the store: a consumer that
    died between the two leaves events its successor finds logged already."""
    store = tmp_path / "store"

    class NoDelete(ObjectStore):
        def delete(self, uris: list[str]) -> None:
            if any("/inbox/" in u for u in uris):
                raise ObjectStoreError("the process died here")
            super().delete(uris)

    first = DriftFeed(NoDelete(), str(store), tmp_path / "a", "replica-a")
    put(store, "1-a-0.jsonl", *prediction("p1", 1.0, label=1))
    with pytest.raises(ObjectStoreError):
        first.drain("farm", "clf", 10_000_000)
    second = DriftFeed(ObjectStore(), str(store), tmp_path / "b", "replica-b")
    second.drain("farm", "clf", 10_000_000)
    assert rows(tmp_path / "b") == [1.0]
    assert RequestLogReader(tmp_path / "b" / "farm" / "clf").labelled_count() == 1
    assert ObjectStore().list(str(store / "inbox")) == []


def test_a_consumer_released_while_it_adopts_is_not_kept(tmp_path: Path) -> None:
    """kopf stopped the deployment's daemon (this replica paused) while a drain was still
    adopting the log in its thread: that consumer must not linger, stale, for later."""
    feeds: list[DriftFeed] = []

    class Racing(ObjectStore):
        def list(self, prefix: str) -> list[str]:
            feeds[0].release("farm", "clf")  # the daemon stops now
            return super().list(prefix)

    feeds.append(DriftFeed(Racing(), str(tmp_path / "store"), tmp_path / "a", "replica-a"))
    with pytest.raises(Released):
        feeds[0].drain("farm", "clf", 10_000_000)
    assert not feeds[0]._feeds


def test_the_byte_bound_reaches_the_copy_in_the_store(tmp_path: Path) -> None:
    """Files the bound removes locally are removed from the store's copy too."""
    store = tmp_path / "store"
    feed = DriftFeed(ObjectStore(), str(store), tmp_path / "a", "replica-a")
    for i in range(6):
        put(store, f"{i}-a-0.jsonl", *prediction(f"p{i}", float(i)))
        feed.drain("farm", "clf", 40_000)  # about two chunks of one image each
    local = sorted(p.name for p in (tmp_path / "a" / "farm" / "clf" / "requests").iterdir())
    copies = sorted(Path(c).name for c in ObjectStore().list(str(store / "log")))
    assert copies == local and len(local) < 6
    feed.close()


def test_the_store_setting(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).request_log_store_uri == str(
        tmp_path / "requestlog-store")  # one process only
    shared = Settings.from_env({"TRELLIS_REQUEST_LOG_STORE": "s3://trellis/requestlog"})
    assert shared.request_log_store_uri == "s3://trellis/requestlog"
    with pytest.raises(ValueError, match=r"TRELLIS_REQUEST_LOG_STORE: .*bucket and a key"):
        Settings.from_env({"TRELLIS_REQUEST_LOG_STORE": "s3://trellis"})
