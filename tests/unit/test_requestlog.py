"""The request + feedback log: contract layout, readers, the byte bound, restarts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.serving.requestlog import (
    FeedbackMismatch,
    RequestLog,
    StorageFull,
    UnknownPuid,
)
from controller.serving.requestlog_read import RequestLogReader

F = 4
ROW_BYTES = 64 * 64 * 3  # one uint8 image


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    feats = np.full((n, F), float(seed), dtype=np.float32)
    pred = np.arange(n) % 2
    return x, feats, pred


def _append(log: RequestLog, puid: str, seed: int, n: int = 1, version: int = 1) -> None:
    x, feats, pred = _rows(n, seed)
    log.append(puid, ts=float(seed), version=version, features=feats, pred=pred, x=x)


def test_chunk_follows_the_contract(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8, flush_rows=3)
    _append(log, "a", 1, n=2)
    assert not list((tmp_path / "requests").glob("*.npz"))  # buffered below flush_rows
    _append(log, "b", 2)  # third row: flush
    (chunk,) = sorted((tmp_path / "requests").glob("chunk-*.npz"))
    with np.load(chunk) as z:
        assert z["puid"].tolist() == ["a", "a", "b"]
        assert z["ts"].dtype == np.float64 and z["ts"].tolist() == [1.0, 1.0, 2.0]
        assert z["version"].dtype == np.int64
        assert z["features"].dtype == np.float32 and z["features"].shape == (3, F)
        assert z["pred"].tolist() == [0, 1, 0]
        assert z["x"].dtype == np.uint8 and z["x"].shape == (3, 64, 64, 3)


def test_flush_if_due_and_close_write_the_buffer(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8, flush_rows=100, flush_seconds=0.0)
    _append(log, "a", 1)
    log.flush_if_due()
    assert len(list((tmp_path / "requests").glob("*.npz"))) == 1
    _append(log, "b", 2)
    log.close()
    assert len(list((tmp_path / "requests").glob("*.npz"))) == 2


def test_recent_features_newest_rows_across_chunks(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8, flush_rows=2)
    for i in range(7):
        _append(log, f"p{i}", i, version=10 + i)
    log.flush()
    feats, versions = log.recent_features(5)
    assert feats.shape == (5, F)
    assert feats[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]  # oldest first, newest last
    assert versions.tolist() == [12, 13, 14, 15, 16]
    feats, _ = log.recent_features(100)
    assert len(feats) == 7
    empty, vers = RequestLogReader(tmp_path / "nothing").recent_features(3)
    assert empty.shape[0] == 0 and vers.shape == (0,)


def test_recent_features_stops_at_another_feature_width(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8, flush_rows=1)
    x, _, pred = _rows(1, 0)
    log.append("old", 0.0, 1, np.zeros((1, 3), np.float32), pred, x)
    _append(log, "new", 1, version=2)
    feats, versions = log.recent_features(10)
    assert feats.shape == (1, F) and versions.tolist() == [2]


def test_feedback_round_trip_and_readers(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8, flush_rows=100)
    _append(log, "one", 1)  # pred [0]
    _append(log, "two", 2, n=2, version=2)  # pred [0, 1]
    _append(log, "three", 3)
    record = log.record_feedback("two", [0, 0])
    assert record.version == 2 and record.preds == (0, 1) and record.labels == (0, 0)
    # Acknowledged means on disk: the feedback line and the (flushed) labelled input.
    lines = [json.loads(x) for f in (tmp_path / "feedback").glob("*.jsonl") for x in f.open()]
    assert lines[0]["puid"] == "two" and lines[0]["label"] == [0, 0] and "ts" in lines[0]
    assert list((tmp_path / "requests").glob("*.npz"))
    log.record_feedback("one", [1])
    reader = RequestLogReader(tmp_path)  # another process's view
    assert reader.labelled_count() == 3
    assert reader.live_accuracy() == pytest.approx(1 / 3)  # two: 1 of 2 right; one: wrong
    assert reader.live_accuracy(version=2) == pytest.approx(0.5)
    assert reader.live_accuracy(since_ts=100.0) is None
    log.record_feedback("one", [0])  # a correction: the later label wins
    assert reader.live_accuracy() == pytest.approx(2 / 3)
    n = reader.export_labelled(tmp_path / "export")
    with np.load(tmp_path / "export" / "labelled.npz") as z:
        assert n == 3 and z["x"].shape == (3, 64, 64, 3) and z["x"].dtype == np.uint8
        assert z["y"].dtype == np.int64 and sorted(z["y"].tolist()) == [0, 0, 0]
        expected = np.concatenate([_rows(1, 1)[0], _rows(2, 2)[0]])
        assert sorted(map(bytes, z["x"])) == sorted(map(bytes, expected))


def test_feedback_errors(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8)
    _append(log, "a", 1, n=2)
    with pytest.raises(UnknownPuid):
        log.record_feedback("nope", [1])
    with pytest.raises(FeedbackMismatch, match="2 input"):
        log.record_feedback("a", [1])
    with pytest.raises(ValueError, match="already logged"):
        _append(log, "a", 2)


def test_bound_drops_oldest_unlabelled_chunks_first(tmp_path: Path) -> None:
    bound = 12 * ROW_BYTES
    log = RequestLog(tmp_path, max_bytes=bound, flush_rows=2)
    _append(log, "keep", 0)
    log.record_feedback("keep", [1])
    for i in range(1, 60):
        _append(log, f"p{i}", i)
        assert log.used_bytes() <= bound
    log.flush()
    assert RequestLogReader(tmp_path).disk_bytes() <= bound
    assert log.knows("keep") and log.knows("p59") and not log.knows("p1")
    with pytest.raises(UnknownPuid):
        log.record_feedback("p1", [0])
    assert RequestLogReader(tmp_path).labelled_count() == 1


def test_partly_labelled_chunks_are_compacted(tmp_path: Path) -> None:
    bound = 10 * ROW_BYTES
    log = RequestLog(tmp_path, max_bytes=bound, flush_rows=4)
    for i in range(4):
        _append(log, f"a{i}", i)
    log.record_feedback("a1", [1])  # chunk 0: one labelled row of four
    for i in range(4, 40):
        _append(log, f"b{i}", i)
    log.flush()
    assert log.knows("a1") and not log.knows("a0")
    first = sorted((tmp_path / "requests").glob("chunk-*.npz"))[0]
    with np.load(first) as z:
        assert z["puid"].tolist() == ["a1"]
    assert RequestLogReader(tmp_path).disk_bytes() <= bound


def test_full_of_labels_rejects_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    bound = 8 * ROW_BYTES
    log = RequestLog(tmp_path, max_bytes=bound, flush_rows=2)
    acknowledged = []
    with pytest.raises(StorageFull, match="labelled requests only"):
        for i in range(100):
            _append(log, f"p{i}", i)
            log.record_feedback(f"p{i}", [1])
            acknowledged.append(f"p{i}")
    assert 3 <= len(acknowledged) < 8
    log.close()
    reader = RequestLogReader(tmp_path)
    assert reader.disk_bytes() <= bound
    assert reader.labelled_count() == len(acknowledged)
    assert set(reader.feedback()) >= set(acknowledged)


def test_request_larger_than_the_bound(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=ROW_BYTES)
    with pytest.raises(StorageFull, match="do not fit"):
        _append(log, "big", 1, n=2)


def test_restart_rebuilds_the_index_and_tolerates_a_torn_line(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=10**8)
    _append(log, "a", 1)
    _append(log, "b", 2)
    log.record_feedback("a", [0])
    log.close()
    with open(next((tmp_path / "feedback").glob("*.jsonl")), "a") as fh:
        fh.write('{"puid": "b", "lab')  # a crash mid-line
    (tmp_path / "requests" / "chunk-000000000099.npz.tmp").write_bytes(b"half")
    again = RequestLog(tmp_path, max_bytes=10**8)
    assert not list((tmp_path / "requests").glob("*.tmp"))
    assert again.knows("a") and again.knows("b")
    assert again.record_feedback("b", [1]).version == 1
    with pytest.raises(ValueError, match="already logged"):
        _append(again, "a", 3)
    assert again.labelled_count() == 2


def test_label_summary_matches_the_separate_readers(tmp_path: Path) -> None:
    from controller.serving.requestlog import RequestLog
    from controller.serving.requestlog_read import RequestLogReader

    log = RequestLog(tmp_path, 1 << 26)
    x = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    for i, (version, pred, label) in enumerate([(1, 0, 0), (1, 1, 0), (2, 1, 1), (2, 0, None)]):
        log.append(f"p{i}", 100.0 + i, version, np.zeros((1, 4)), np.array([pred]), x)
        if label is not None:
            log.record_feedback(f"p{i}", [label])
    log.flush()
    reader = RequestLogReader(tmp_path)
    for version, since in ((1, None), (2, 101.5), (3, 0.0)):
        assert reader.label_summary(version, since) == (
            reader.labelled_count(),
            reader.labelled_count(since_ts=since) if since is not None else 0,
            reader.live_accuracy(version=version))
    assert reader.label_summary(1, 101.0) == (3, 2, 0.5)
    log.close()
