"""What a training Job's one pod runs: the whole flow, in that pod, and its outcome.

``python -m controller.training.podrun`` reads ``TRELLIS_RUN_REQUEST`` (JSON: flow_file,
flow_name, parameters, tags), runs ``python <flow> run`` there — every step in this pod,
with the pod's CPU, memory and GPU, artifacts in the S3 datastore — and ends by writing
the run's outcome as the container's termination message: pathspec, metrics, model and
reference URIs, commit, or the error with the output's last lines. That is how the
operator learns the result without Metaflow's metadata service (local metadata dies
with the pod); with ``METAFLOW_DEFAULT_METADATA=service`` the run also shows in
Metaflow's UI.

Why not ``run --with kubernetes``: each step would be a pod of its own that Metaflow
creates, owned by nothing, without the Job's Secret, env or security context, left
running when the Experiment is deleted (docs/architecture.md).

SIGTERM (the Job deleted, its deadline passed) reaches the flow's whole process group as
SIGINT (Metaflow's runtime then stops its tasks and flushes their logs), SIGKILL follows
before the pod's grace period ends: no step outlives the pod. Only the standard library
and Metaflow.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

MARKER = "podrun"  # the key that says a termination message is ours (controller.podstate)
MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
TAIL_LINES = 40
DEFAULT_LOG = "/dev/termination-log"
KILL_AFTER_S = 20.0
# Directories the environment names that must exist before Metaflow runs.
SCRATCH_ENV = ("TMPDIR", "METAFLOW_ARTIFACT_LOCALROOT", "METAFLOW_TEMPDIR",
               "METAFLOW_CLIENT_CACHE_PATH")


def command(req: dict[str, Any], run_id_file: Path) -> list[str]:
    """``python <flow> run`` with the request's tags and parameters."""
    cmd = [sys.executable, req["flow_file"], "--no-pylint", "run",
           "--run-id-file", str(run_id_file)]
    for key, value in sorted((req.get("tags") or {}).items()):
        cmd += ["--tag", f"{key}:{value}"]
    for name, value in sorted((req.get("parameters") or {}).items()):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        cmd += [f"--{name}", text]
    return cmd


def read_run(flow_name: str, run_id: str) -> dict[str, Any]:
    """The finished run's artifacts, through the Metaflow client (this pod's metadata)."""
    from metaflow import Run, namespace

    namespace(None)
    run = Run(f"{flow_name}/{run_id}")
    data = run.data
    return {"pathspec": run.pathspec, "metrics": dict(data.metrics),
            "model_uri": data.model_uri, "reference_uri": data.reference_uri,
            "commit": data.commit, "dataset_fingerprint": data.dataset_fingerprint,
            "epoch_metrics": list(data.epoch_metrics)}


def message(outcome: dict[str, Any], limit: int = MESSAGE_LIMIT) -> str:
    """The outcome as JSON within ``limit`` bytes (the kubelet keeps a message's last
    4096, which would not parse): the oldest epochs go first, then the start of the
    output's tail (its end says what broke), then metrics that are not numbers (a large
    confusion matrix; only numbers reach the status), then the metrics themselves
    (``truncated`` says so). The pathspec, model and error line stay whole."""
    doc = {MARKER: 1, **outcome}

    def dump() -> str:
        return json.dumps(doc, separators=(",", ":"), default=str)

    text = dump()
    while len(text.encode()) > limit and doc.get("epoch_metrics"):
        doc["epoch_metrics"] = doc["epoch_metrics"][1:]
        text = dump()
    for key in ("output", "error"):
        kept = doc.get(key) or ""
        while len(text.encode()) > limit and kept:
            kept = kept[max(16, len(text.encode()) - limit + 3):]
            doc[key] = "..." + kept
            text = dump()
    if len(text.encode()) > limit and isinstance(doc.get("metrics"), dict):
        doc["metrics"] = {k: v for k, v in doc["metrics"].items()
                          if isinstance(v, int | float) and not isinstance(v, bool)}
        doc["truncated"] = True
        text = dump()
    if len(text.encode()) > limit:
        doc.pop("metrics", None)
        doc.pop("epoch_metrics", None)
        text = dump()
    return text


def run(req: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run the flow to its end; the outcome (``error`` set when it failed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # The scratch directories the Job points at (an emptyDir starts empty): Metaflow's
    # S3 client calls mkdtemp(dir=ARTIFACT_LOCALROOT) and fails if it is missing.
    for name in SCRATCH_ENV:
        if os.environ.get(name):
            Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    run_id_file = workdir / "run-id"
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(command(req, run_id_file), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)

    def forward(_signum: int, _frame: object) -> None:
        # Metaflow's runtime cleans up (kills its tasks, flushes their logs) only on
        # KeyboardInterrupt: pass SIGTERM on as SIGINT, then SIGKILL whatever is left
        # before the kubelet's grace period (30 s by default) ends.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        timer = threading.Timer(KILL_AFTER_S, _kill_group, (proc.pid,))
        timer.daemon = True
        timer.start()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
    outcome: dict[str, Any] = {"returncode": code}
    if run_id:
        outcome["pathspec"] = f"{req['flow_name']}/{run_id}"
    if code != 0:
        return outcome | {"error": f"the flow exited with code {code}",
                          "output": "\n".join(tail)}
    try:
        return outcome | read_run(req["flow_name"], run_id)
    except Exception as exc:  # the run ended well but its artifacts cannot be read
        return outcome | {"error": f"cannot read run {run_id or '(no run id)'}: {exc}"}


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def main() -> int:
    req = json.loads(os.environ["TRELLIS_RUN_REQUEST"])
    workdir = Path(os.environ.get("TRELLIS_WORKDIR") or tempfile.mkdtemp(prefix="podrun-"))
    try:
        outcome = run(req, workdir)
    except Exception as exc:  # the flow could not even start
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    text = message(outcome)
    target = Path(os.environ.get("TRELLIS_TERMINATION_LOG") or DEFAULT_LOG)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"cannot write the termination message to {target}: {exc}", file=sys.stderr)
    print(text)
    return 0 if not outcome.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
