"""The drift feed's shared inbox: what every receiver writes and the one consumer reads.

Seldon's request logger posts the request and the response of one prediction as two
CloudEvents that may reach different operator replicas. No replica pairs them on its
own: each replica's receiver appends every event it acknowledges to the inbox of the
deployment in the shared store (``settings.request_log_store``: S3 in a cluster),
and only the deployment's reconciler on the active replica drains that inbox into the
request log (``controller.drift_feed``). This module is the format they share and the
consumer's pure decision over it.

Layout under the store's root::

    inbox/<namespace>/<name>/<time ns>-<replica>-<seq>.jsonl   events, one object per batch
    log/<namespace>/<name>/<writer>/requests/chunk-<seq>.npz    the request log's copy
    log/<namespace>/<name>/<writer>/feedback/chunk-<seq>.jsonl

An inbox object is written whole before any event in it is acknowledged, never changed,
and deleted once every event in it is logged (or given up on). One line per event,
already digested so pairing needs nothing but the pair: a request carries its inputs as
uint8 images, a response the model's features, version and predicted classes.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.objectstore import join
from controller.serving.requestlog_read import IMAGE_SHAPE

REQUEST = "request"
RESPONSE = "response"
FEEDBACK = "feedback"
# A half whose other half has not arrived by then never will: Seldon's executor sends no
# response event when the model fails. Feedback waits as long for its prediction.
UNPAIRED_TTL_S = 600.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def inbox_prefix(root: str, namespace: str, name: str) -> str:
    return join(root, "inbox", namespace, name)


def log_prefix(root: str, namespace: str, name: str) -> str:
    return join(root, "log", namespace, name)


def inbox_object(root: str, namespace: str, name: str, *, time_ns: int, replica: str,
                 seq: int) -> str:
    """A new inbox object's URI: unique per replica, sorting by when it was written."""
    return join(inbox_prefix(root, namespace, name),
                f"{time_ns:020d}-{safe_name(replica)}-{seq:06d}.jsonl")


def safe_name(text: str) -> str:
    """``text`` as one path segment of an object key (pure)."""
    return _SAFE.sub("_", text)[:100] or "_"


# ------------------------------------------------------------------ encoding
def request_line(rid: str, ts: float, x: np.ndarray) -> bytes:
    if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or len(x) == 0:
        raise ValueError(f"expected uint8 images (n, 64, 64, 3), n >= 1, got {x.dtype} "
                         f"{x.shape}")
    return _line({"t": REQUEST, "rid": rid, "ts": ts, "n": len(x),
                  "x": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode()})


def response_line(rid: str, ts: float, version: int, features: np.ndarray,
                  pred: list[int]) -> bytes:
    return _line({"t": RESPONSE, "rid": rid, "ts": ts, "version": int(version),
                  "features": np.asarray(features, dtype=np.float32).tolist(),
                  "pred": [int(p) for p in pred]})


def feedback_line(puid: str, ts: float, labels: list[int]) -> bytes:
    return _line({"t": FEEDBACK, "rid": puid, "ts": ts, "labels": [int(v) for v in labels]})


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Record:
    """One event of an inbox object: ``rid`` is the prediction's puid for all kinds."""

    obj: str  # the inbox object's URI
    index: int  # its line in that object
    kind: str
    rid: str
    ts: float
    data: dict[str, Any] = field(compare=False, repr=False)

    def images(self) -> np.ndarray:
        n = int(self.data["n"])
        raw = base64.b64decode(self.data["x"])
        return np.frombuffer(raw, dtype=np.uint8).reshape(n, *IMAGE_SHAPE)


def decode_object(uri: str, data: bytes) -> tuple[list[Record], int]:
    """An inbox object's events, and how many lines were not events (skipped)."""
    records, bad = [], 0
    for index, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            kind, rid, ts = raw["t"], str(raw["rid"]), float(raw["ts"])
            if kind not in (REQUEST, RESPONSE, FEEDBACK) or not rid:
                raise ValueError(kind)
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        records.append(Record(uri, index, kind, rid, ts, raw))
    return records, bad


# ------------------------------------------------------------------ the decision
@dataclass
class DrainPlan:
    """What one drain does with the events it has not dealt with yet."""

    pairs: list[tuple[Record, Record]] = field(default_factory=list)  # (request, response)
    feedback: list[Record] = field(default_factory=list)  # after the pairs are appended
    duplicates: list[Record] = field(default_factory=list)  # their prediction is settled
    expired: list[Record] = field(default_factory=list)  # waited UNPAIRED_TTL_S in vain
    waiting: list[Record] = field(default_factory=list)  # kept for a later drain

    def in_order(self) -> list[tuple[Record, Record | None]]:
        """Pairs ``(request, response)`` and feedback ``(feedback, None)`` in the order they
        happened — a pair when its second half arrived, feedback after its pair — so the
        byte bound sees a label before it would drop the labelled prediction."""
        when = {req.rid: max(req.ts, resp.ts) for req, resp in self.pairs}
        steps: list[tuple[float, int, tuple[Record, Record | None]]] = [
            (when[req.rid], 0, (req, resp)) for req, resp in self.pairs]
        steps += [(max(r.ts, when.get(r.rid, r.ts)), 1, (r, None)) for r in self.feedback]
        return [step for *_, step in sorted(steps, key=lambda s: (s[0], s[1]))]

    def dealt_with(self) -> list[Record]:
        return [r for pair in self.pairs for r in pair] + self.feedback + self.duplicates \
            + self.expired


def plan_drain(records: Iterable[Record], settled: Callable[[str], bool], now: float,
               ttl: float = UNPAIRED_TTL_S) -> DrainPlan:
    """Pair halves by request id, match feedback to its prediction (pure).

    ``settled(rid)``: the log already dealt with that prediction (logged it, or dropped
    it for want of room). A half of a settled prediction is a duplicate — a drain that
    ended before it could delete its inbox objects is drained again, by this replica or
    the next active one — and so is a second half of a kind already paired. Feedback is
    recorded once its prediction is settled or paired in this same drain; a half or
    feedback that waited ``ttl`` seconds for what it needs is given up.
    """
    plan = DrainPlan()
    halves: dict[str, dict[str, Record]] = {}
    feedback: list[Record] = []
    for r in sorted(records, key=lambda r: (r.ts, r.obj, r.index)):
        if r.kind == FEEDBACK:
            feedback.append(r)
        elif settled(r.rid) or r.kind in halves.get(r.rid, {}):
            plan.duplicates.append(r)
        else:
            halves.setdefault(r.rid, {})[r.kind] = r
    paired: set[str] = set()
    for rid, by_kind in halves.items():
        if REQUEST in by_kind and RESPONSE in by_kind:
            plan.pairs.append((by_kind[REQUEST], by_kind[RESPONSE]))
            paired.add(rid)
        else:
            for r in by_kind.values():
                (plan.expired if now - r.ts > ttl else plan.waiting).append(r)
    for r in feedback:
        if r.rid in paired or settled(r.rid):
            plan.feedback.append(r)
        else:
            (plan.expired if now - r.ts > ttl else plan.waiting).append(r)
    return plan


def finished_objects(records: dict[str, list[Record]], done: dict[str, set[int]]) -> list[str]:
    """The inbox objects every event of which is dealt with: safe to delete (pure)."""
    return sorted(uri for uri, recs in records.items()
                  if all(r.index in done.get(uri, ()) for r in recs))
