"""A flow-code-only change (same generation, new flow revision from the SpecRepository)
trains the new code: the run is not mistaken for the previous revision's.

The run key is generation × flow revision × episode, but the local workdir, the
Metaflow tags and the Job name used to carry only generation and attempt. The new
revision's first attempt then found the old revision's run by its tags, adopted it,
and recorded it again ("objective not met ... no model registered"): the new code never
ran. The reconciler is driven here pass by pass against a fake local backend.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from controller import api
from controller.context import Context
from controller.reconcilers.experiments import ExperimentReconciler
from controller.retrain_requests import RetrainRequests
from controller.settings import Settings
from controller.training.decide import RunKey
from controller.training.kubernetes import job_name
from controller.training.local import RunObservation, RunRef, RunRequest


class FakeLocal:
    """Launches recorded in memory; ``find`` matches tags as the real index does."""

    def __init__(self) -> None:
        self.launched: list[tuple[dict[str, str], str, str]] = []  # tags, workdir, pathspec
        self.calls: list[str] = []  # workdirs launch() was asked for
        self.parameters: list[dict[str, Any]] = []  # per launch() call

    async def find(self, tags: dict[str, str]) -> list[RunRef]:
        return [RunRef(p, None, wd) for t, wd, p in self.launched if tags.items() <= t.items()]

    async def launch(self, req: RunRequest) -> RunRef:
        self.calls.append(str(Path(req.workdir).resolve()))  # noqa: ASYNC240 - a fake
        self.parameters.append(dict(req.parameters))
        for _tags, wd, p in self.launched:
            if wd == self.calls[-1]:  # idempotent per workdir, as the real one
                return RunRef(p or None, 4242, wd)
        pathspec = f"PumpkinFlow/{len(self.launched) + 1}"
        self.launched.append((dict(req.tags), str(req.workdir), pathspec))
        return RunRef(pathspec, 4242, str(req.workdir))

    async def observe(self, ref: RunRef) -> RunObservation:
        return RunObservation("succeeded", pathspec=ref.pathspec, metrics={"accuracy": 0.95},
                              model_uri=f"file:///models/{ref.pathspec}")


def offline(tmp_path: Path, requests: dict[Any, list[Any]] | None = None) -> Context:
    """A context without an API server; ``requests`` stands in for kopf's index of the
    ModelDeployments' retrain requests."""
    ctx = Context(settings=Settings(state_dir=tmp_path), kube=None)  # type: ignore[arg-type]
    ctx.retrain_requests = RetrainRequests(None, {} if requests is None else requests)  # type: ignore[arg-type]
    return ctx


def experiment(revision: str) -> dict[str, Any]:
    return {"metadata": {"name": "classifier", "namespace": "farm", "uid": "u-1",
                         "generation": 1,
                         "annotations": {api.ANN_FLOW_REVISION: revision}},
            "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                     "parameters": {"epochs": 1}, "backend": "local",
                     "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9},
                     "retry": {"limit": 0}}}


def settle(rec: ExperimentReconciler, obj: dict[str, Any]) -> dict[str, Any]:
    """Reconcile until the Experiment has no run in flight (as the loop would)."""
    for _ in range(10):
        out = asyncio.run(rec.reconcile(obj))
        obj = {**obj, "status": copy.deepcopy(out.status)}
        if not obj["status"].get("currentRun") and obj["status"].get("runs"):
            return obj
    raise AssertionError(f"never settled: {obj['status']}")


def test_a_new_flow_revision_trains_again_and_registers_a_new_version(tmp_path: Path) -> None:
    rec = ExperimentReconciler(offline(tmp_path))
    fake = FakeLocal()
    rec.local = fake  # type: ignore[assignment]
    obj = settle(rec, experiment("aaaa000011112222"))
    assert [m["version"] for m in obj["status"]["models"]] == [1]

    changed = experiment("bbbb000011112222")
    changed["status"] = obj["status"]
    obj = settle(rec, changed)
    assert len(fake.launched) == 2, "the new revision adopted the old revision's run"
    (tags1, wd1, _), (tags2, wd2, _) = fake.launched
    assert wd1 != wd2
    assert tags1["trellis.flow-revision"] == "aaaa000011112222"
    assert tags2["trellis.flow-revision"] == "bbbb000011112222"
    st = obj["status"]
    assert [m["version"] for m in st["models"]] == [1, 2]
    assert [r["pathspec"] for r in st["runs"]] == ["PumpkinFlow/1", "PumpkinFlow/2"]
    assert st["runs"][-1]["reason"] == api.Reason.MODEL_REGISTERED


def test_job_names_differ_per_flow_revision() -> None:
    a = job_name("e", RunKey(1, "", "aaaa000011112222"), 1)
    b = job_name("e", RunKey(1, "", "bbbb000011112222"), 1)
    assert a != b and len(a) <= 63
    assert job_name("e", RunKey(1), 1) == "e-g1-a1"  # objects not from git: names unchanged
    assert len(job_name("x" * 80, RunKey(12, "ep-1", "aaaa000011112222"), 3)) <= 63


def test_a_launch_begun_in_the_same_workdir_goes_back_through_launch(tmp_path: Path) -> None:
    """A launch index entry for this very workdir (an operator killed mid-launch) is
    completed by the backend's idempotent launch, not adopted as a run without a
    process (which observe would call lost)."""
    rec = ExperimentReconciler(offline(tmp_path))
    fake = FakeLocal()
    rec.local = fake  # type: ignore[assignment]
    obj = experiment("")
    obj["status"] = asyncio.run(rec.reconcile(obj)).status  # phase one: currentRun noted
    current = obj["status"]["currentRun"]
    assert not current["launched"]
    workdir = str(Path(current["workdir"]).resolve())
    fake.launched.append((rec._tags(obj, current), workdir, ""))  # begun, then killed
    out = asyncio.run(rec.reconcile(obj))
    assert fake.calls == [workdir]
    assert out.status["currentRun"]["launched"] and out.status["currentRun"]["pid"] == 4242


def test_a_deployments_retrain_request_is_adopted_and_run_once(tmp_path: Path) -> None:
    """The drift monitor wrote only its deployment's status; the Experiment adopts the
    request into its own ``status.retrain`` with the run it launches, then never again."""
    request = {"episode": "classifier-v1-20261127-120000", "requestedAt": "2026-11-27T12:00:00Z",
               "experiment": "classifier", "reason": "DriftDetected", "window": 150,
               "pValues": {"hue": 1e-6}, "feedbackUri": str(tmp_path / "feedback.npz")}
    index: dict[Any, list[Any]] = {}
    rec = ExperimentReconciler(offline(tmp_path, index))
    fake = FakeLocal()
    rec.local = fake  # type: ignore[assignment]
    obj = settle(rec, experiment(""))
    index[("farm", "classifier")] = [{"deployment": "classifier", "request": request}]
    out = asyncio.run(rec.reconcile(obj))
    assert out.status["retrain"] == {**{k: v for k, v in request.items() if k != "experiment"},
                                     "deployment": "classifier"}
    assert out.status["currentRun"]["trigger"] == request["episode"]
    assert [e.reason for e in out.events] == [api.Reason.RETRAIN_REQUESTED]
    obj = settle(rec, {**obj, "status": copy.deepcopy(out.status)})
    assert [r["trigger"] for r in obj["status"]["runs"]] == ["", request["episode"]]
    (_, _, _), (tags, _, _) = fake.launched
    assert tags["trellis.trigger"] == request["episode"]
    assert fake.parameters[-1]["feedback_uri"] == request["feedbackUri"]
    again = asyncio.run(rec.reconcile(obj))  # the request is still on the deployment
    assert again.status.get("currentRun") is None and not again.events
    assert len(fake.launched) == 2
