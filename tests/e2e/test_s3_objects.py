"""Drift references and retrain feedback in a real S3 server (SeaweedFS, as the dev
cluster runs it): the drift monitor reads an s3:// reference, a missing one is a reason
rather than a crash, and feedback exported for a pod's retrain is what the flow loads."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from controller import failures
from controller.devcluster.s3 import S3Server
from controller.drift_monitor import DriftMonitor
from controller.feedback import export_labelled, export_uri
from controller.paths import ROOT
from controller.serving.requestlog import RequestLog
from controller.serving.requestlog_read import RequestLogReader
from controller.settings import Settings
from tests.support import s3server

pytestmark = [pytest.mark.e2e]
REF = "metaflow/models/PumpkinFlow/7/reference.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3server.running(tmp_path_factory.mktemp("s3")) as srv:
        yield srv


@pytest.fixture
def settings(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The operator's environment as the Secret trellis-s3 sets it."""
    for name, value in s3server.environment(server).items():
        monkeypatch.setenv(name, value)
    return Settings.from_env({**s3server.environment(server), "TRELLIS_STATE_DIR": str(tmp_path)})


def reference_status(monitor: DriftMonitor, uri: str) -> dict:
    """What one pass leaves on the status when the reference is read: its check's status,
    or the loop's failed status with the rest of the pass kept (``failures``)."""
    status = {"phase": "Serving", "stableVersion": "v7"}
    try:
        asyncio.run(monitor._reference(("farm", "classifier"), uri, 7))
    except Exception as exc:  # what deployments.py hands the loop on Outcome.error
        return failures.failed_status(status, failures.classify(exc), 2)
    return status


def test_reference_read_from_s3_and_missing_one_is_a_reason(
        server: S3Server, settings: Settings) -> None:
    names = ["hue", "weight"]
    samples = [[float(i % 7), float(i % 5)] for i in range(50)]
    server.client().put_object(Bucket="trellis", Key=REF, Body=json.dumps(
        {"feature_names": names, "samples": samples}).encode())
    monitor = DriftMonitor(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    ref = asyncio.run(monitor._reference(("farm", "classifier"), f"s3://trellis/{REF}", 7))
    assert ref.feature_names == tuple(names) and ref.n == 50

    status = reference_status(monitor, "s3://trellis/metaflow/models/PumpkinFlow/8/reference.json")
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ModelUnreadable")
    assert "PumpkinFlow/8/reference.json) cannot be read: no such object" in ready["message"]
    assert status["phase"] == "Serving" and status["stableVersion"] == "v7"


def load_flow_module():
    """flows/pumpkin_flow.py as the trainer loads it (its helpers; nothing runs)."""
    spec = importlib.util.spec_from_file_location("pumpkin_flow",
                                                  ROOT / "flows" / "pumpkin_flow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feedback_exported_to_s3_is_what_the_flow_loads(
        server: S3Server, settings: Settings, tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log", max_bytes=10**8, flush_rows=1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for i in range(3):
        log.append(f"p{i}", 100.0 + i, 1, rng.random((1, 4)), np.array([0]), x[i:i + 1])
        log.record_feedback(f"p{i}", [i % 2])
    log.close()
    uri = export_uri(backend="kubernetes", s3_root=settings.datastore_s3_root,
                     state_dir=settings.state_dir, namespace="farm", deployment="classifier",
                     episode="ep-1")
    assert uri == "s3://trellis/metaflow/feedback/farm/classifier/ep-1.npz"
    monitor = DriftMonitor(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    assert export_labelled(RequestLogReader(tmp_path / "log"), uri, None, monitor.store) == 3

    fx, fy = load_flow_module()._load_feedback(uri)
    assert fx.dtype == np.uint8 and sorted(map(bytes, fx)) == sorted(map(bytes, x))
    assert fy.dtype == np.int64 and sorted(fy.tolist()) == [0, 0, 1]
