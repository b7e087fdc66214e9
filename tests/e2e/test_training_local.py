"""Real Metaflow runs of the real PumpkinFlow through the local training backend.

Each test has its own datastore root. Runs that do not assert accuracy use tiny
parameters; most of their time is Metaflow starting one process per step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from controller.paths import FLOWS_DIR, ROOT
from controller.training.local import (
    LocalTrainingBackend,
    RunObservation,
    RunRef,
    RunRequest,
    _group_alive,
)

pytestmark = pytest.mark.e2e
FLOW = FLOWS_DIR / "pumpkin_flow.py"
TINY = {"n_samples": 200, "epochs": 1}


@pytest.fixture
def datastore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "metaflow"
    root.mkdir()
    monkeypatch.setenv("METAFLOW_USER", "trellis")
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(root))
    monkeypatch.setenv("METAFLOW_DEFAULT_METADATA", "local")
    monkeypatch.setenv("METAFLOW_DEFAULT_DATASTORE", "local")
    return root


def request(tmp: Path, parameters: dict, env: dict | None = None, **tags: str) -> RunRequest:
    uid = uuid.uuid4().hex[:8]
    return RunRequest(
        flow_file=FLOW, flow_name="PumpkinFlow", parameters=parameters,
        tags={"trellis.namespace": "farm", "trellis.name": "pumpkins", "trellis.uid": uid,
              "trellis.generation": "1", "trellis.attempt": "1", **tags},
        resources={"cpu": "1500m", "memory": "2Gi"}, workdir=tmp / f"run-{uid}", env=env or {},
    )


async def follow(backend: LocalTrainingBackend, ref: RunRef, limit: float = 240.0
                 ) -> tuple[RunObservation, list[RunObservation]]:
    """Observe every half second until the run ends; all observations, for progress checks."""
    seen = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        obs = await backend.observe(ref)
        seen.append(obs)
        if obs.state not in ("starting", "running"):
            return obs, seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"run {ref} did not finish in {limit}s; last: {seen[-1]}")


def wait_dead(pgid: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while _group_alive(pgid, None) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_default_run_trains_a_good_model_with_the_contract_artifacts(
        datastore: Path, tmp_path: Path) -> None:
    store = tmp_path / "models"
    req = request(tmp_path, {}, env={"TRELLIS_SOURCE_COMMIT": "c0ffee",
                                      "TRELLIS_MODEL_STORE": str(store)})

    async def scenario() -> tuple[RunRef, RunObservation, list[RunObservation], list[RunRef]]:
        backend = LocalTrainingBackend(datastore)
        started = time.monotonic()
        ref = await backend.launch(req)
        assert ref.pathspec and ref.pathspec.startswith("PumpkinFlow/")
        final, seen = await follow(backend, ref)
        print(f"default flow run took {time.monotonic() - started:.1f}s")
        return ref, final, seen, await backend.find({"trellis.uid": req.tags["trellis.uid"]})

    ref, final, seen, found = asyncio.run(scenario())
    assert final.state == "succeeded", final.error
    assert final.metrics["accuracy"] >= 0.9
    assert final.commit == "c0ffee"
    assert final.dataset_fingerprint.startswith("sha256:")
    assert [e["epoch"] for e in final.epoch_metrics] == [float(e) for e in range(1, 9)]
    assert any(o.state == "running" and o.step == "train" for o in seen)  # progress was live
    assert found == [RunRef(ref.pathspec, ref.pid, ref.workdir)]

    version = Path(final.model_uri.removeprefix("file://"))
    assert version == store / "PumpkinFlow" / ref.pathspec.split("/")[1]
    assert final.reference_uri == (version / "reference.json").as_uri()
    metrics = json.loads((version / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "precision_bad", "recall_bad", "precision_good",
                            "recall_good", "f1", "confusion_matrix"}
    assert metrics["accuracy"] == final.metrics["accuracy"]
    meta = json.loads((version / "meta.json").read_text())
    assert {k: meta[k] for k in ("flow", "run", "commit", "dataset_fingerprint")} == {
        "flow": "PumpkinFlow", "run": ref.pathspec.split("/")[1], "commit": "c0ffee",
        "dataset_fingerprint": final.dataset_fingerprint}
    assert meta["parameters"]["n_samples"] == 3000 and meta["created_at"]
    reference = json.loads((version / "reference.json").read_text())
    names = reference["feature_names"]
    assert 6 <= len(names) <= 10
    assert 0 < len(reference["samples"]) <= 2000
    assert {len(row) for row in reference["samples"]} == {len(names)}
    assert set(reference["summary"]) == set(names)
    assert set(reference["summary"][names[0]]) == {"mean", "std", "min", "max", "quantiles"}
    assert set(reference["class_counts"]) == {"bad", "good"}

    # The serving image has torch but not our code: load it the same way.
    probe = textwrap.dedent("""
        import importlib.util, json, sys, torch
        assert importlib.util.find_spec("pumpkin_model") is None
        m = torch.jit.load(sys.argv[1])
        x = torch.rand(3, 64, 64, 3)
        print(json.dumps([list(m(x).shape), list(m.features(x).shape), list(m.feature_names)]))
    """)
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(version / "model.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    logits, feats, feature_names = json.loads(out.stdout.strip().splitlines()[-1])
    assert logits == [3, 2] and feats == [3, len(names)] and feature_names == names


@pytest.mark.parametrize(
    ("parameters", "step", "expected"),
    [
        ({**TINY, "fail_at_step": "train"}, "train",
         "RuntimeError: fail_at_step='train': deliberate failure for testing"),
        ({**TINY, "watermelon_fraction": 0.6}, "verify", "more than max_invalid_fraction=20.0%"),
        ({"n_samples": "many"}, None, "Invalid type for 'n_samples'"),
    ],
    ids=["raising-step", "too-many-watermelons", "bad-parameter-type"],
)
def test_failures_carry_the_real_error(datastore: Path, tmp_path: Path, parameters: dict,
                                       step: str | None, expected: str) -> None:
    async def scenario() -> RunObservation:
        backend = LocalTrainingBackend(datastore)
        return (await follow(backend, await backend.launch(request(tmp_path, parameters))))[0]

    final = asyncio.run(scenario())
    assert final.state == "failed"
    assert expected in final.error
    assert len(final.error.splitlines()) <= 15
    if step:
        assert final.step == step and final.pathspec
        assert final.error.splitlines()[-1].startswith(("RuntimeError", "ValueError"))


def test_reattach_with_a_new_backend_and_feedback_data(datastore: Path, tmp_path: Path) -> None:
    """Drop the backend mid-run; a new one finds the run by tags and follows it to the end."""
    sys.path.insert(0, str(FLOWS_DIR))
    import pumpkin_data

    white = pumpkin_data.generate(60, seed=42, variety="white")
    labels = white.y.copy()
    labels[:5] = 7  # labels the flow cannot use are dropped by verify
    feedback = tmp_path / "feedback.npz"
    np.savez(feedback, x=pumpkin_data.to_uint8(white.x), y=labels)
    req = request(tmp_path, {**TINY, "feedback_uri": str(feedback)})

    async def launch() -> RunRef:
        backend = LocalTrainingBackend(datastore)
        ref = await backend.launch(req)
        again = await backend.launch(req)  # same workdir and tags: adopted, not relaunched
        assert again == ref
        with pytest.raises(FileExistsError):
            await backend.launch(RunRequest(**{**req.__dict__, "tags": {"other": "tags"}}))
        return ref

    async def reattach() -> tuple[list[RunRef], RunObservation]:
        backend = LocalTrainingBackend(datastore)
        found = await backend.find({"trellis.uid": req.tags["trellis.uid"],
                                    "trellis.generation": "1"})
        assert await backend.find({"trellis.uid": "someone-else"}) == []
        return found, (await follow(backend, found[0]))[0]

    ref = asyncio.run(launch())
    found, final = asyncio.run(reattach())
    assert [(r.pathspec, r.workdir) for r in found] == [(ref.pathspec, ref.workdir)]
    assert final.state == "succeeded", final.error
    version = Path(final.model_uri.removeprefix("file://"))
    assert version.parent.parent == datastore / "models"  # default store: datastore root
    counts = json.loads((version / "reference.json").read_text())["class_counts"]
    kept = 200 - int(pumpkin_data.detect_watermelons(
        pumpkin_data.generate(200, seed=0, watermelon_fraction=0.05).x).sum())
    assert sum(counts.values()) == kept - 2 * int(0.15 * kept) + 55


OPERATOR = """
import asyncio, json, sys
from pathlib import Path
from controller.training.local import LocalTrainingBackend, RunRequest

async def main():
    spec = json.loads(sys.argv[2])
    spec["flow_file"], spec["workdir"] = Path(spec["flow_file"]), Path(spec["workdir"])
    ref = await LocalTrainingBackend(Path(sys.argv[1])).launch(RunRequest(**spec))
    print(json.dumps(ref.to_dict()), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_run_survives_a_sigkilled_operator(datastore: Path, tmp_path: Path) -> None:
    req = request(tmp_path, TINY)
    spec = {**req.__dict__, "flow_file": str(req.flow_file), "workdir": str(req.workdir)}
    operator = subprocess.Popen(
        [sys.executable, "-c", OPERATOR, str(datastore), json.dumps(spec)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        stored = json.loads(operator.stdout.readline())  # what the operator put on status
    finally:
        operator.kill()
        operator.wait()
    ref = RunRef.from_dict(stored)
    assert ref.pathspec and _group_alive(ref.pid, None)

    async def scenario() -> RunObservation:
        backend = LocalTrainingBackend(datastore)
        assert await backend.find({"trellis.uid": req.tags["trellis.uid"]}) == [ref]
        return (await follow(backend, ref))[0]

    final = asyncio.run(scenario())
    assert final.state == "succeeded", final.error
    assert final.model_uri


@pytest.mark.parametrize("how", ["cancel", "kill-everything"])
def test_cancelled_and_lost_runs(datastore: Path, tmp_path: Path, how: str) -> None:
    req = request(tmp_path, {"n_samples": 2000, "epochs": 50})

    async def scenario() -> RunObservation:
        backend = LocalTrainingBackend(datastore)
        ref = await backend.launch(req)
        assert (await backend.observe(ref)).state == "running"
        if how == "cancel":
            await backend.cancel(ref, grace=5.0)
        else:  # the machine went down: every process of the run dies at once
            os.killpg(ref.pid, signal.SIGKILL)
            await asyncio.to_thread(wait_dead, ref.pid)
        assert not _group_alive(ref.pid, None)
        return await LocalTrainingBackend(datastore).observe(ref)

    final = asyncio.run(scenario())
    if how == "cancel":
        assert final.state == "failed" and "cancelled" in final.error
    else:
        assert final.state == "lost" and "never finished" in final.error
