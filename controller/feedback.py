"""Where the labelled live inputs of a drift episode go for the retrain, and putting them there.

The retrain runs where the Experiment trains: a local run reads the operator's disk, a
``backend: kubernetes`` run is a pod that cannot — it reads the cluster's object store,
the S3 root its Metaflow datastore and model store already live under. So the export
target follows the Experiment's backend (``export_uri``, pure), and the export writes
through ``controller.objectstore`` whichever it is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from controller.objectstore import ObjectStore, join, parse
from controller.serving.requestlog_read import RequestLogReader

EXTENSION = "npz"  # x uint8 (n, 64, 64, 3), y int64: docs/contracts.md "Retraining inputs"


def export_uri(*, backend: str, s3_root: str, state_dir: Path, namespace: str,
               deployment: str, episode: str) -> str:
    """The URI one episode's feedback is exported to (pure).

    ``kubernetes``: ``<s3_root>/feedback/<namespace>/<deployment>/<episode>.npz``, beside
    the models the trainer pod writes (``s3_root`` is ``TRELLIS_DATASTORE_S3_ROOT``).
    Anything else trains in a local process: a path under the operator's state dir.
    """
    name = f"{episode}.{EXTENSION}"
    if backend == "kubernetes":
        if not s3_root:
            raise ValueError("backend: kubernetes needs TRELLIS_DATASTORE_S3_ROOT for the "
                             "feedback a retrain reads")
        return join(s3_root, "feedback", namespace, deployment, name)
    return str(state_dir / "feedback" / namespace / deployment / name)


def export_labelled(reader: RequestLogReader, uri: str, since_ts: float | None,
                    store: ObjectStore) -> int:
    """Write the inputs labelled since ``since_ts`` to ``uri``; how many (0: nothing for
    a retrain to read, and nothing uploaded). Blocking: async callers run it in a thread.

    Raises ``ObjectStoreError`` when the object cannot be written, ``ValueError`` for a
    URI that names no place it can go."""
    loc = parse(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return reader.export_labelled(path, since_ts)
    with tempfile.TemporaryDirectory(prefix="trellis-feedback-") as tmp:
        staged = Path(tmp) / f"feedback.{EXTENSION}"
        count = reader.export_labelled(staged, since_ts)
        if count:
            store.write(uri, staged.read_bytes())
    return count
