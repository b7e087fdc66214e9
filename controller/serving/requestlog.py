"""The durable request + feedback log of one ModelDeployment (see docs/contracts.md).

One writer (the router process) appends; readers (the operator's drift detector and
retraining) are other processes that only look at files. Request chunks are written
whole to a temporary name and renamed into place, so a reader never sees half a chunk;
feedback is one JSON line per call, appended and flushed before the call returns, so an
acknowledged label survives a router crash (a reader skips a torn last line).

A byte bound keeps the log from filling the disk: the oldest unlabelled requests go
first (a chunk without labels is deleted, a partly labelled one is rewritten with only
its labelled rows); only when everything left is labelled does a write fail with
:class:`StorageFull` (the router then drops the record and answers anyway).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from controller.serving.requestlog_read import (
    FEEDBACK,
    IMAGE_SHAPE,
    REQUESTS,
    RequestLogReader,
    chunk_paths,
    feedback_paths,
    read_chunk,
)

logger = logging.getLogger(__name__)

_CHUNK_OVERHEAD = 4096  # npz/zip headers of one chunk, a generous estimate
_ROW_OVERHEAD = 32  # ts, version, pred per row


class StorageFull(Exception):
    """The byte bound is reached and nothing unlabelled is left to drop."""


class UnknownPuid(KeyError):
    """No logged request has this puid (never seen, or dropped to respect the bound)."""


class FeedbackMismatch(ValueError):
    """The labels do not fit the request (one label per input row)."""


@dataclass(frozen=True)
class FeedbackRecord:
    """What a feedback call matched: the request's version and predictions."""

    puid: str
    version: int
    preds: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass
class _Entry:
    chunk: int | None  # None while buffered in memory
    version: int
    preds: tuple[int, ...]


@dataclass
class _Chunk:
    path: Path
    nbytes: int
    puids: list[str] = field(default_factory=list)


@dataclass
class _Row:
    puid: str
    ts: float
    version: int
    features: np.ndarray
    pred: np.ndarray
    x: np.ndarray


class RequestLog(RequestLogReader):
    """The writer: thread-safe (the router calls it from worker threads)."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        flush_rows: int = 64,
        flush_seconds: float = 2.0,
        feedback_chunk_bytes: int = 1 << 20,
    ) -> None:
        super().__init__(root)
        self.max_bytes = max_bytes
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.feedback_chunk_bytes = feedback_chunk_bytes
        self._lock = threading.Lock()
        self._buffer: list[_Row] = []
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        self._chunks: dict[int, _Chunk] = {}
        self._index: dict[str, _Entry] = {}
        self._labels: dict[str, tuple[int, ...]] = {}
        self._feedback_bytes = 0
        self._feedback_file: IO[str] | None = None
        self._feedback_path: Path | None = None
        for sub in (REQUESTS, FEEDBACK):
            (root / sub).mkdir(parents=True, exist_ok=True)
            for stale in (root / sub).glob("*.tmp"):
                stale.unlink(missing_ok=True)
        self._load()

    # ---- startup -------------------------------------------------------------------

    def _load(self) -> None:
        for seq, path in chunk_paths(self.root):
            arrays = read_chunk(path, ("puid", "version", "pred"))
            if arrays is None:
                logger.warning("request log: skipping unreadable chunk %s", path)
                continue
            puids, versions, preds = arrays
            chunk = _Chunk(path, path.stat().st_size)
            for puid, rows in group_rows(puids):
                chunk.puids.append(puid)
                self._index[puid] = _Entry(
                    seq, int(versions[rows][0]), tuple(int(p) for p in preds[rows])
                )
            self._chunks[seq] = chunk
        self._next_seq = max(self._chunks, default=-1) + 1
        self._labels = {puid: tuple(labels) for puid, (labels, _) in self.feedback().items()}
        paths = feedback_paths(self.root)
        self._feedback_bytes = sum(p.stat().st_size for _, p in paths)
        self._feedback_seq = max((seq for seq, _ in paths), default=-1) + 1

    # ---- writing -------------------------------------------------------------------

    def append(
        self,
        puid: str,
        ts: float,
        version: int,
        features: np.ndarray,
        pred: np.ndarray,
        x: np.ndarray,
    ) -> None:
        """Buffer one request's rows; raises StorageFull when the bound leaves no room."""
        n = len(x)
        if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or n == 0:
            raise ValueError(f"x must be uint8 (n, 64, 64, 3) with n >= 1, got {x.dtype} {x.shape}")
        features = np.asarray(features, dtype=np.float32).reshape(n, -1)
        pred = np.asarray(pred, dtype=np.int64).reshape(n)
        need = x.nbytes + features.nbytes + n * (_ROW_OVERHEAD + 4 * len(puid))
        with self._lock:
            if puid in self._index:
                raise ValueError(f"puid {puid!r} is already logged")
            extra = 0 if self._buffer else _CHUNK_OVERHEAD
            self._make_room(need + extra)
            if not self._buffer and not extra:  # making room flushed the buffer
                extra = _CHUNK_OVERHEAD
                self._make_room(need + extra)
            need += extra
            if not self._buffer:
                self._buffer_since = time.monotonic()
            self._buffer.append(_Row(puid, ts, int(version), features, pred, x))
            self._buffer_bytes += need
            self._index[puid] = _Entry(None, int(version), tuple(int(p) for p in pred))
            if sum(len(r.x) for r in self._buffer) >= self.flush_rows:
                self._flush_locked()

    def record_feedback(self, puid: str, labels: list[int],
                        ts: float | None = None) -> FeedbackRecord:
        """Store labels for a logged request; durable (flushed to the OS) on return.
        ``ts``: when the label was given (now, unless it is a copy of an older one)."""
        with self._lock:
            entry = self._index.get(puid)
            if entry is None:
                raise UnknownPuid(puid)
            if len(labels) != len(entry.preds):
                raise FeedbackMismatch(
                    f"request {puid} had {len(entry.preds)} input(s) but {len(labels)} label(s) "
                    "were sent"
                )
            label: int | list[int] = labels[0] if len(labels) == 1 else labels
            line = json.dumps({"puid": puid, "label": label,
                               "ts": time.time() if ts is None else ts})
            previous = self._labels.get(puid)
            self._labels[puid] = tuple(labels)  # labelled now, so making room cannot drop it
            try:
                self._make_room(len(line) + 1)
            except StorageFull:
                if previous is None:
                    del self._labels[puid]
                else:
                    self._labels[puid] = previous
                raise
            if entry.chunk is None:
                self._flush_locked()  # the labelled input must outlive a crash too
            handle = self._feedback_handle()
            handle.write(line + "\n")
            handle.flush()
            self._feedback_bytes += len(line) + 1
            return FeedbackRecord(puid, entry.version, entry.preds, tuple(labels))

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def flush_if_due(self) -> None:
        """Flush when the oldest buffered row has waited ``flush_seconds``."""
        with self._lock:
            if self._buffer and time.monotonic() - self._buffer_since >= self.flush_seconds:
                self._flush_locked()

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            if self._feedback_file is not None:
                self._feedback_file.close()
                self._feedback_file = None

    def used_bytes(self) -> int:
        """Bytes counted against the bound: files on disk plus the buffer's estimate."""
        with self._lock:
            return self._used()

    def knows(self, puid: str) -> bool:
        with self._lock:
            return puid in self._index

    # ---- internals (lock held) -----------------------------------------------------

    def _used(self) -> int:
        disk = sum(c.nbytes for c in self._chunks.values())
        return disk + self._feedback_bytes + self._buffer_bytes

    def _make_room(self, need: int) -> None:
        if need > self.max_bytes:
            raise StorageFull(f"{need} bytes do not fit the log bound of {self.max_bytes} bytes")
        flushed = False
        while self._used() + need > self.max_bytes:
            if self._drop_oldest_unlabelled():
                continue
            if self._buffer and not flushed:
                self._flush_locked()  # buffered rows become chunks that can be dropped
                flushed = True
                continue
            raise StorageFull(
                f"request log is full: {self._used()} of {self.max_bytes} bytes hold labelled "
                "requests only; export them for retraining or raise the storage bound"
            )

    def _drop_oldest_unlabelled(self) -> bool:
        """Free the oldest unlabelled rows: delete their chunk, or rewrite it without them."""
        for seq, chunk in self._chunks.items():  # insertion order is oldest first
            keep = [p for p in chunk.puids if p in self._labels]
            if len(keep) == len(chunk.puids):
                continue
            if keep:
                names = ("puid", "ts", "version", "features", "pred", "x")
                arrays = read_chunk(chunk.path, names)
                if arrays is None:
                    continue
                mask = np.isin(arrays[0], keep)
                kept = {name: a[mask] for name, a in zip(names, arrays, strict=True)}
                self._write_chunk(chunk.path, kept)
                self._chunks[seq] = _Chunk(chunk.path, chunk.path.stat().st_size, keep)
            else:
                chunk.path.unlink(missing_ok=True)
                del self._chunks[seq]
            for puid in chunk.puids:
                if puid not in self._labels:
                    self._index.pop(puid, None)
            logger.info("request log: dropped unlabelled rows of %s", chunk.path.name)
            return True
        return False

    def _flush_locked(self) -> None:
        rows, self._buffer, self._buffer_bytes = self._buffer, [], 0
        start = 0
        while start < len(rows):  # one chunk per feature width (a new model may differ)
            width = rows[start].features.shape[1]
            end = start
            while end < len(rows) and rows[end].features.shape[1] == width:
                end += 1
            self._write_rows(rows[start:end])
            start = end

    def _write_rows(self, rows: list[_Row]) -> None:
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        path = self.root / REQUESTS / f"chunk-{seq:012d}.npz"
        counts = [len(r.x) for r in rows]
        arrays = {
            "puid": np.repeat(np.array([r.puid for r in rows]), counts),
            "ts": np.repeat(np.array([r.ts for r in rows], dtype=np.float64), counts),
            "version": np.repeat(np.array([r.version for r in rows], dtype=np.int64), counts),
            "features": np.concatenate([r.features for r in rows]),
            "pred": np.concatenate([r.pred for r in rows]),
            "x": np.concatenate([r.x for r in rows]),
        }
        self._write_chunk(path, arrays)
        self._chunks[seq] = _Chunk(path, path.stat().st_size, [r.puid for r in rows])
        for r in rows:
            self._index[r.puid].chunk = seq

    @staticmethod
    def _write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)

    def _feedback_handle(self) -> IO[str]:
        if self._feedback_file is not None and self._feedback_path is not None:
            if self._feedback_path.stat().st_size < self.feedback_chunk_bytes:
                return self._feedback_file
            self._feedback_file.close()
        self._feedback_path = self.root / FEEDBACK / f"chunk-{self._feedback_seq:012d}.jsonl"
        self._feedback_seq += 1
        self._feedback_file = open(self._feedback_path, "a", encoding="utf-8")  # noqa: SIM115
        return self._feedback_file


def group_rows(puids: np.ndarray) -> list[tuple[str, slice]]:
    """Contiguous runs of one puid (a request's rows are always written together)."""
    if len(puids) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, puids[1:] != puids[:-1]])
    ends = np.r_[starts[1:], len(puids)]
    return [(str(puids[s]), slice(int(s), int(e))) for s, e in zip(starts, ends, strict=True)]
