"""Cluster mode's drift log: one consumer per ModelDeployment, kept in the shared store.

Every operator replica receives Seldon's request-logger events and appends them to the
deployment's inbox in the shared store before acknowledging them
(``controller.serving.cloudevents``). The consumer is the deployment's reconciler, and
kopf's peering runs reconcilers on the active replica only, so however many replicas
receive, one process pairs and logs: each pass ``drain`` reads the inbox, pairs request
and response by request id and matches feedback (``inbox.plan_drain``), appends to the
request log on this replica's disk — what the drift monitor reads — and then copies the
log's changed files to the store under this consumer's own prefix. Only after that
copy does it delete the inbox objects it has dealt with: an acknowledged event is always
in the inbox or in the store's copy of the log.

A consumer starts by adopting what is in the store (``_adopt``): the copies every earlier
consumer left — the replica that died, or this one before it paused — are replayed into
a fresh local log (a prediction logged twice is kept once), written under the new
consumer's prefix, and only then deleted. A replica that pauses drops its consumers
(``release``, when kopf stops the deployment's daemon): its local log is a cache that
another consumer may have moved past. The calls block (store and disk): async callers
run them in a thread.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.objectstore import ObjectNotFound, ObjectStore, join, parse
from controller.request_logging import LogState
from controller.serving.inbox import (
    UNPAIRED_TTL_S,
    Record,
    decode_object,
    finished_objects,
    inbox_prefix,
    log_prefix,
    plan_drain,
    safe_name,
)
from controller.serving.requestlog import (
    FeedbackMismatch,
    RequestLog,
    StorageFull,
    UnknownPuid,
    group_rows,
)
from controller.serving.requestlog_read import (
    FEEDBACK,
    REQUESTS,
    chunk_paths,
    deployment_log_dir,
    feedback_paths,
    read_feedback_lines,
)

log = logging.getLogger("trellis.driftfeed")

WRITER = "active operator replica"  # who the RequestLogging condition says drops records
MAX_OBJECTS_PER_DRAIN = 1000  # a backlog is read over several passes, oldest first
UNLOGGED_PUIDS = 10_000  # per deployment: puids dropped while full (their feedback too)
_COLUMNS = ("puid", "ts", "version", "features", "pred", "x")

# Told of each record that does not reach the log: (namespace, name, kind) -> None.
DropHook = Callable[[str, str, str], None]


class Released(Exception):
    """The deployment's consumer was released (its daemon stopped) during the drain."""


@dataclass
class _Feed:
    """One deployment's consumer in this process."""

    log: RequestLog
    writer: str  # this consumer's prefix for its copy of the log in the store
    records: dict[str, list[Record]] = field(default_factory=dict)  # inbox objects read
    done: dict[str, set[int]] = field(default_factory=dict)  # their events dealt with
    uploaded: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> size, mtime
    full: bool = False  # the last write was dropped for want of room
    dropped: dict[str, int] = field(default_factory=lambda: {"request": 0, "feedback": 0})
    unlogged: OrderedDict[str, None] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


class DriftFeed:
    def __init__(self, store: ObjectStore, root: str, local_root: Path, replica: str, *,
                 on_drop: DropHook | None = None, ttl: float = UNPAIRED_TTL_S) -> None:
        loc = parse(root)
        self.store = store
        self.root = loc.path if loc.scheme == "file" else root.strip()
        self.local_root = Path(local_root)
        self.replica = replica
        self.on_drop = on_drop
        self.ttl = ttl
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the pass
    def drain(self, namespace: str, name: str, max_bytes: int) -> LogState:
        """Log what the inbox holds; the log's state for the RequestLogging condition.
        Raises ``ObjectStoreError`` when the store fails (nothing is lost: the inbox
        keeps what was not copied), ``Released`` when the consumer was let go meanwhile."""
        feed = self._feed(namespace, name, max_bytes)
        with feed.lock:
            if feed.closed:
                raise Released(f"{namespace}/{name}")
            feed.log.max_bytes = max_bytes
            self._read_inbox(feed, namespace, name)
            pending = [r for uri, recs in feed.records.items() for r in recs
                       if r.index not in feed.done.get(uri, ())]
            plan = plan_drain(pending, lambda rid: feed.log.knows(rid) or rid in feed.unlogged,
                              time.time(), self.ttl)
            for record, response in plan.in_order():
                if response is None:
                    self._label(feed, namespace, name, record)
                else:
                    self._append(feed, namespace, name, record, response)
            for record in plan.expired:
                kind = "unmatched" if record.kind == "feedback" else "unpaired"
                log.info("drift log of %s/%s: %s %s of %s given up after %.0fs", namespace,
                         name, kind, record.kind, record.rid, self.ttl)
                self._count(namespace, name, kind)
            for record in plan.dealt_with():
                feed.done.setdefault(record.obj, set()).add(record.index)
            feed.log.flush()
            self._sync(feed, namespace, name)  # the log's copy first, then the inbox goes
            finished = finished_objects(feed.records, feed.done)
            if finished:
                self.store.delete(finished)
                for uri in finished:
                    feed.records.pop(uri, None)
                    feed.done.pop(uri, None)
            return LogState(full=feed.full, dropped_requests=feed.dropped["request"],
                            dropped_feedback=feed.dropped["feedback"],
                            used_bytes=feed.log.used_bytes(), max_bytes=max_bytes,
                            writer=WRITER)

    def release(self, namespace: str, name: str) -> None:
        """This process no longer consumes the deployment (paused, exiting, deleted): drop
        what it kept; consuming again starts by adopting the store's copy."""
        key = (namespace, name)
        with self._lock:
            self._epochs[key] = self._epochs.get(key, 0) + 1
            feed = self._feeds.pop(key, None)
        if feed is not None:
            with feed.lock:
                feed.closed = True
                feed.log.close()

    def close(self) -> None:
        for namespace, name in list(self._feeds):
            self.release(namespace, name)

    # ------------------------------------------------------------------ consumer
    def _feed(self, namespace: str, name: str, max_bytes: int) -> _Feed:
        key = (namespace, name)
        with self._lock:
            feed, epoch = self._feeds.get(key), self._epochs.get(key, 0)
        if feed is not None:
            return feed
        feed = self._adopt(namespace, name, max_bytes)
        with self._lock:
            if self._epochs.get(key, 0) == epoch and key not in self._feeds:
                self._feeds[key] = feed
                return feed
        feed.log.close()
        raise Released(f"{namespace}/{name}")

    def _adopt(self, namespace: str, name: str, max_bytes: int) -> _Feed:
        """A new consumer: the local log rebuilt from every copy in the store, written
        under this consumer's prefix, and the copies it replaces deleted."""
        local = deployment_log_dir(self.local_root, namespace, name)
        shutil.rmtree(local, ignore_errors=True)  # a cache: the store's copy is the log
        prefix = log_prefix(self.root, namespace, name)
        found = self.store.list(prefix)
        feed = _Feed(RequestLog(local, max_bytes),
                     f"{time.time_ns():020d}-{safe_name(self.replica)}")
        try:
            rows = self._restore(feed, prefix, found)
            feed.log.flush()
            self._sync(feed, namespace, name)
            if found:
                self.store.delete(found)
        except BaseException:
            feed.log.close()
            raise
        log.info("drift log of %s/%s adopted: %d prediction(s) from %d object(s) in the store",
                 namespace, name, rows, len(found))
        return feed

    def _restore(self, feed: _Feed, prefix: str, found: list[str]) -> int:
        """Replay the copies under ``prefix`` (oldest consumer first) into ``feed.log``."""
        chunks: list[tuple[str, int, str]] = []  # (writer, seq, uri): oldest first
        label_files: list[tuple[str, int, str]] = []
        labels: dict[str, tuple[list[int], float]] = {}
        for uri in found:
            parts = uri[len(prefix):].strip("/").split("/")
            if len(parts) != 3 or not parts[2].startswith("chunk-"):
                continue
            writer, sub, fname = parts
            seq = int("".join(c for c in fname if c.isdigit()) or 0)
            if sub in (REQUESTS, FEEDBACK):
                (chunks if sub == REQUESTS else label_files).append((writer, seq, uri))
        for _, _, uri in sorted(label_files):  # labels first: they keep rows in the bound
            try:
                read_feedback_lines(self.store.read(uri).decode("utf-8", "replace"), labels)
            except ObjectNotFound:
                continue
        rows = 0
        for _, _, uri in sorted(chunks):
            try:
                with np.load(io.BytesIO(self.store.read(uri))) as z:
                    puid, ts, version, features, pred, x = (z[c] for c in _COLUMNS)
            except ObjectNotFound:
                continue
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("drift log copy %s unreadable, skipped: %s", uri, exc)
                continue
            for rid, sl in group_rows(puid):
                if feed.log.knows(rid):
                    continue  # two consumers logged it: kept once
                try:
                    feed.log.append(rid, float(ts[sl][0]), int(version[sl][0]), features[sl],
                                    pred[sl], x[sl])
                except (StorageFull, ValueError):
                    continue
                rows += 1
                if rid in labels:
                    with contextlib.suppress(StorageFull, FeedbackMismatch, UnknownPuid):
                        feed.log.record_feedback(rid, labels[rid][0], ts=labels[rid][1])
        return rows

    def _read_inbox(self, feed: _Feed, namespace: str, name: str) -> None:
        listed = self.store.list(inbox_prefix(self.root, namespace, name))
        present = set(listed)
        for uri in [u for u in feed.records if u not in present]:
            feed.records.pop(uri)  # deleted by another consumer, which logged it
            feed.done.pop(uri, None)
        fresh = [u for u in listed if u not in feed.records][:MAX_OBJECTS_PER_DRAIN]
        for uri in fresh:
            try:
                data = self.store.read(uri)
            except ObjectNotFound:
                continue
            records, bad = decode_object(uri, data)
            if bad:
                log.warning("drift inbox object %s: %d line(s) are no events, skipped",
                            uri, bad)
            feed.records[uri] = records

    def _append(self, feed: _Feed, namespace: str, name: str, request: Record,
                response: Record) -> None:
        try:
            x = request.images()
            features = np.asarray(response.data["features"], dtype=np.float32)
            pred = np.asarray(response.data["pred"], dtype=np.int64)
            version = int(response.data["version"])
            if len(features) != len(x) or len(pred) != len(x):
                raise ValueError(f"{len(x)} input(s) but {len(features)} feature row(s) and "
                                 f"{len(pred)} prediction(s)")
            feed.log.append(request.rid, request.ts, version, features, pred, x)
        except StorageFull as exc:
            self._dropped(feed, namespace, name, "request", request.rid, exc)
            return
        except (ValueError, KeyError, TypeError) as exc:
            if feed.log.knows(request.rid):
                return
            log.warning("drift log of %s/%s: prediction %s not logged: %s", namespace, name,
                        request.rid, exc)
            self._count(namespace, name, "unpaired")
            return
        self._room_again(feed, namespace, name)

    def _label(self, feed: _Feed, namespace: str, name: str, record: Record) -> None:
        try:
            feed.log.record_feedback(record.rid, list(record.data["labels"]), ts=record.ts)
        except UnknownPuid:
            if record.rid in feed.unlogged:  # its prediction was dropped while full
                self._dropped(feed, namespace, name, "feedback", record.rid,
                              StorageFull("its prediction was not logged"))
            else:  # dropped since to keep the bound
                self._count(namespace, name, "unmatched")
            return
        except (FeedbackMismatch, KeyError, TypeError, ValueError) as exc:
            log.warning("drift log of %s/%s: feedback for %s not recorded: %s", namespace,
                        name, record.rid, exc)
            self._count(namespace, name, "unmatched")
            return
        except StorageFull as exc:
            self._dropped(feed, namespace, name, "feedback", record.rid, exc)
            return
        self._room_again(feed, namespace, name)

    def _sync(self, feed: _Feed, namespace: str, name: str) -> None:
        """Copy the local log's new and changed files to the store, delete the copies of
        files the byte bound removed."""
        root = feed.log.root
        base = join(log_prefix(self.root, namespace, name), feed.writer)
        now: dict[str, tuple[int, int]] = {}
        for sub, paths in ((REQUESTS, chunk_paths(root)), (FEEDBACK, feedback_paths(root))):
            for _, path in paths:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                now[f"{sub}/{path.name}"] = (st.st_size, st.st_mtime_ns)
        for rel, sig in sorted(now.items()):
            if feed.uploaded.get(rel) != sig:
                self.store.write(join(base, rel), (root / rel).read_bytes())
                feed.uploaded[rel] = sig
        gone = [rel for rel in feed.uploaded if rel not in now]
        if gone:
            self.store.delete([join(base, rel) for rel in gone])
            for rel in gone:
                del feed.uploaded[rel]

    # ------------------------------------------------------------------ tallies
    def _count(self, namespace: str, name: str, kind: str) -> None:
        if self.on_drop is not None:
            self.on_drop(namespace, name, kind)

    def _dropped(self, feed: _Feed, namespace: str, name: str, kind: str, rid: str,
                 exc: StorageFull) -> None:
        """A record the full log could not take; said once per episode."""
        if not feed.full:
            log.warning("request log of %s/%s full, %s records are being dropped: %s",
                        namespace, name, kind, exc)
        feed.full = True
        feed.dropped[kind] += 1
        if kind == "request":
            feed.unlogged[rid] = None
            if len(feed.unlogged) > UNLOGGED_PUIDS:
                feed.unlogged.popitem(last=False)
        self._count(namespace, name, kind)

    def _room_again(self, feed: _Feed, namespace: str, name: str) -> None:
        if feed.full:
            log.info("request log of %s/%s has room again: logging resumed", namespace, name)
            feed.full = False


def replica_name() -> str:
    """This operator process as inbox object names and log copies say it: kopf's peering
    identity (``POD_ID``, the pod's name in a cluster) or host and pid."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}"
