"""``controller.training.podrun``, what a training Job's pod runs, run as the pod would run
it (``python -m controller.training.podrun`` with the Job's kind of environment), around
a real Metaflow run of the real PumpkinFlow. Local datastore here: the S3 path is proven
by the node tests; what this checks is the outcome message the operator reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.paths import ROOT
from controller.training import podrun, podstate

FLOW = str(ROOT / "flows" / "pumpkin_flow.py")
FAST = {"n_samples": 300, "epochs": 1, "seed": 3}


def _start(tmp_path: Path, parameters: dict, tags: dict | None = None) -> subprocess.Popen:
    env = {**os.environ,
           "TRELLIS_RUN_REQUEST": json.dumps({"flow_file": FLOW, "flow_name": "PumpkinFlow",
                                              "parameters": parameters,
                                              "tags": tags or {"trellis.uid": "u-1"}}),
           "TRELLIS_WORKDIR": str(tmp_path / "run"),
           "TRELLIS_TERMINATION_LOG": str(tmp_path / "termination-log"),
           "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "METAFLOW_USER": "trellis", "METAFLOW_DEFAULT_DATASTORE": "local",
           "METAFLOW_DEFAULT_METADATA": "local",
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"),
           "TRELLIS_MODEL_STORE": str(tmp_path / "models"),
           "TRELLIS_SOURCE_COMMIT": "c0ffee", "TRELLIS_DEVICE": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "controller.training.podrun"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _processes_with(marker: bytes) -> list[int]:
    """Processes whose environment holds ``marker`` (every process of the run inherits it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _as_pod(message: str) -> list[dict]:
    """The termination message as the kubelet reports it on the pod."""
    return [{"metadata": {"name": "p", "creationTimestamp": "2026-12-01T00:00:00Z"},
             "status": {"containerStatuses": [{"name": "flow", "state": {"terminated": {
                 "exitCode": 0, "message": message}}}]}}]


def test_a_run_ends_with_its_outcome_as_the_termination_message(tmp_path: Path) -> None:
    proc = _start(tmp_path, FAST)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    result = podstate.run_result(_as_pod((tmp_path / "termination-log").read_text()), "flow")
    assert result is not None, out
    assert result["pathspec"].startswith("PumpkinFlow/")
    assert result["commit"] == "c0ffee"
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert len(result["epoch_metrics"]) == 1
    assert Path(result["model_uri"].removeprefix("file://"), "model.pt").is_file()
    assert "error" not in result
    assert "model version" in out  # the flow's own output reaches the pod's log


def test_a_failing_flow_says_why_in_the_message(tmp_path: Path) -> None:
    proc = _start(tmp_path, {**FAST, "fail_at_step": "train"})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["pathspec"].startswith("PumpkinFlow/")
    assert result["error"] == "the flow exited with code 1"
    assert "deliberate failure for testing" in result["output"]


def test_sigterm_stops_every_process_of_the_run(tmp_path: Path) -> None:
    """The Job deleted: the kubelet sends SIGTERM to podrun, which passes it to the flow's
    process group; nothing of the run is left when podrun has exited."""
    proc = _start(tmp_path, {**FAST, "n_samples": 3000, "epochs": 50})
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "run-id").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    marker = f"TRELLIS_WORKDIR={tmp_path / 'run'}".encode()
    deadline = time.monotonic() + 30  # the flow's processes may take a moment to exit
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes of the run left: {left}"
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["error"]


def test_the_message_fits_what_kubernetes_keeps() -> None:
    epochs = [{"epoch": i, "accuracy": 0.5, "loss": 1.0} for i in range(500)]
    text = podrun.message({"pathspec": "F/1", "epoch_metrics": epochs})
    doc = json.loads(text)
    assert len(text.encode()) <= podrun.MESSAGE_LIMIT
    assert doc["epoch_metrics"][-1]["epoch"] == 499  # the newest kept
    text = podrun.message({"error": "the flow exited with code 1",
                           "output": "start " + "x" * 10_000 + " the end"})
    assert len(text.encode()) <= podrun.MESSAGE_LIMIT
    assert json.loads(text)["output"].endswith("the end")
    assert json.loads(text)["error"] == "the flow exited with code 1"


def test_a_large_metric_gives_way_and_the_run_still_reads_as_done() -> None:
    """A 100-class confusion matrix does not fit in 4096 bytes: it goes (only numbers
    reach the status), the accuracy and the run's pathspec and model stay."""
    matrix = [[7] * 100 for _ in range(100)]
    text = podrun.message({"pathspec": "F/1", "model_uri": "s3://b/m/1",
                           "metrics": {"accuracy": 0.93, "confusion_matrix": matrix}})
    doc = json.loads(text)
    assert len(text.encode()) <= podrun.MESSAGE_LIMIT
    assert doc["metrics"] == {"accuracy": 0.93} and doc["truncated"] is True
    assert (doc["pathspec"], doc["model_uri"]) == ("F/1", "s3://b/m/1")
