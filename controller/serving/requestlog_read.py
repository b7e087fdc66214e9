"""Reading the request + feedback log from disk (the operator side; see requestlog.py).

Readers run in other processes than the writer and only trust files: a chunk that
vanishes (dropped to respect the byte bound) or is replaced (compacted) mid-read is
skipped, and a torn last feedback line is ignored. Nothing here loads more than the
columns it needs: ``np.load`` of an ``.npz`` reads members on access.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

REQUESTS = "requests"
FEEDBACK = "feedback"
IMAGE_SHAPE = (64, 64, 3)
_CHUNK = re.compile(r"^chunk-(\d+)\.(npz|jsonl)$")


def deployment_log_dir(root: Path, namespace: str, name: str) -> Path:
    """Where one deployment's log lives under ``root``: writers and readers agree here."""
    return root / namespace / name


def _numbered(directory: Path, suffix: str) -> list[tuple[int, Path]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _CHUNK.match(name)
        if match and match.group(2) == suffix:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def chunk_paths(root: Path) -> list[tuple[int, Path]]:
    """Request chunks, oldest first."""
    return _numbered(root / REQUESTS, "npz")


def feedback_paths(root: Path) -> list[tuple[int, Path]]:
    """Feedback files, oldest first."""
    return _numbered(root / FEEDBACK, "jsonl")


def read_chunk(path: Path, names: Sequence[str]) -> tuple[np.ndarray, ...] | None:
    """The named columns of one chunk, or None if it is gone or unreadable."""
    try:
        with np.load(path) as z:
            return tuple(z[name] for name in names)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def read_feedback_lines(text: str, labels: dict[str, tuple[list[int], float]]) -> None:
    """Add the labels of one feedback file's lines to ``labels`` (a later line wins)."""
    for line in text.splitlines():
        try:
            record = json.loads(line)
            label = record["label"]
            values = [int(v) for v in label] if isinstance(label, list) else [int(label)]
            labels[str(record["puid"])] = (values, float(record.get("ts", 0.0)))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash


class RequestLogReader:
    """Answers from the files under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def feedback(self) -> dict[str, tuple[list[int], float]]:
        """Labels per puid; a later line for the same puid wins."""
        labels: dict[str, tuple[list[int], float]] = {}
        for _, path in feedback_paths(self.root):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            read_feedback_lines(text, labels)
        return labels

    def recent_features(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` logged feature rows (oldest first) and their model versions.

        Reads chunks newest first and stops as soon as it has ``n`` rows, or at a chunk
        whose feature width differs from the newest one (an older model's features).
        """
        blocks: list[np.ndarray] = []
        versions: list[np.ndarray] = []
        width: int | None = None
        have = 0
        for _, path in reversed(chunk_paths(self.root)):
            if have >= n:
                break
            arrays = read_chunk(path, ("features", "version"))
            if arrays is None:
                continue
            feats, vers = arrays
            if width is None:
                width = feats.shape[1]
            elif feats.shape[1] != width:
                break
            take = min(n - have, len(feats))
            if take:
                blocks.append(feats[len(feats) - take :])
                versions.append(vers[len(vers) - take :])
                have += take
        if not blocks:
            return np.zeros((0, width or 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(blocks[::-1]), np.concatenate(versions[::-1])

    def _labelled_rows(
        self, names: Sequence[str]
    ) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
        """Per chunk: the label of each row (-1 when unlabelled) and the named columns."""
        labels = self.feedback()
        if not labels:
            return
        for _, path in chunk_paths(self.root):
            arrays = read_chunk(path, ("puid", *names))
            if arrays is None:
                continue
            puids = arrays[0]
            y = np.full(len(puids), -1, dtype=np.int64)
            first: dict[str, int] = {}
            for i, puid in enumerate(puids.tolist()):
                entry = labels.get(puid)
                if entry is None:
                    continue
                offset = i - first.setdefault(puid, i)
                if offset < len(entry[0]):
                    y[i] = entry[0][offset]
            yield y, arrays[1:]

    def labelled_count(self, since_ts: float | None = None) -> int:
        """Logged input rows that have a label (requested at or after ``since_ts``)."""
        if since_ts is None:
            return sum(int((y >= 0).sum()) for y, _ in self._labelled_rows(()))
        return sum(int(((y >= 0) & (ts >= since_ts)).sum())
                   for y, (ts,) in self._labelled_rows(("ts",)))

    def label_summary(self, version: int, since_ts: float | None) -> tuple[int, int, float | None]:
        """(labelled rows, labelled rows at or after ``since_ts``, live accuracy of
        ``version``) in one pass over the log: the drift check asks all three each time."""
        labelled = since = correct = total = 0
        for y, (ts, pred, vers) in self._labelled_rows(("ts", "pred", "version")):
            mask = y >= 0
            labelled += int(mask.sum())
            if since_ts is not None:
                since += int((mask & (ts >= since_ts)).sum())
            mine = mask & (vers == version)
            total += int(mine.sum())
            correct += int((pred[mine] == y[mine]).sum())
        return labelled, since, (correct / total if total else None)

    def live_accuracy(
        self, since_ts: float | None = None, version: int | None = None
    ) -> float | None:
        """Share of labelled rows the model got right (None without labelled rows).

        ``since_ts`` counts only requests made at or after that time; ``version`` only
        one model version (a canary's live accuracy).
        """
        correct = total = 0
        for y, (ts, pred, vers) in self._labelled_rows(("ts", "pred", "version")):
            mask = y >= 0
            if since_ts is not None:
                mask &= ts >= since_ts
            if version is not None:
                mask &= vers == version
            total += int(mask.sum())
            correct += int((pred[mask] == y[mask]).sum())
        return correct / total if total else None

    def export_labelled(self, path: Path, since_ts: float | None = None) -> int:
        """Write labelled inputs to an .npz (``x`` uint8 (n,64,64,3), ``y`` int64).

        ``path`` is the file, or a directory that receives ``labelled.npz``. Returns n.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "labelled.npz"
        xs: list[np.ndarray] = [np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8)]
        ys: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        for y, (x, ts) in self._labelled_rows(("x", "ts")):
            mask = y >= 0
            if since_ts is not None:
                mask &= ts >= since_ts
            if mask.any():
                xs.append(x[mask])
                ys.append(y[mask])
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x_all, y=y_all)
        os.replace(tmp, path)
        return len(y_all)

    def disk_bytes(self) -> int:
        """Bytes the log's files take on disk now."""
        total = 0
        for _, path in chunk_paths(self.root) + feedback_paths(self.root):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total
