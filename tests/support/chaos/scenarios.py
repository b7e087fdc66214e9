"""Scenarios a trial builds: an Experiment training in local mode, a SpecRepository
applying a commit. Each says when its phase starts, whether it is past, when the world
is settled and which invariants must then hold."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

from controller import api
from tests.support.chaos.invariants import (
    LaunchRecord,
    ObjectKey,
    Violation,
    model_versions,
    one_commit,
    one_run_per_key,
    retrain_per_episode,
    runs_accounted,
)
from tests.support.gitrepo import FLOW, GitRepo
from tests.support.kube import Cluster, condition

TRAIN_PARAMS = {"seed": 7, "n_samples": 200, "epochs": 1, "lr": 0.003, "variety": "orange"}


def training_experiment(name: str = "classifier") -> dict[str, Any]:
    """A tiny local-mode Experiment whose every successful run registers a model
    (threshold 0): a version gap or duplicate would then always be visible."""
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                     "parameters": dict(TRAIN_PARAMS), "resources": {"cpu": 1},
                     "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.0},
                     "backend": "local", "retry": {"limit": 0}}}


def repo_experiment(name: str, lr: float) -> str:
    """An Experiment for the SpecRepository (``backend: kubernetes``: its Job never runs
    on a cluster without a node, so the trial stays about the apply)."""
    return f"""apiVersion: {api.GROUP}/{api.VERSION}
kind: Experiment
metadata:
  name: {name}
spec:
  flow:
    file: flows/pumpkin_flow.py
    name: PumpkinFlow
  parameters:
    lr: {lr}
    epochs: 4
  resources:
    gpu: 0
  objective:
    metric: accuracy
    goal: maximize
    threshold: 0.9
  backend: kubernetes
"""


class Scenario:
    """What a trial builds, when its phase starts, when the world is settled, and the
    invariants that must then hold."""

    env: ClassVar[dict[str, str]] = {}  # what its operators need besides the harness's defaults

    def __init__(self, cluster: Cluster, ns: str, root: Path, phase: str) -> None:
        self.cluster, self.ns, self.root, self.phase = cluster, ns, root, phase

    def prepare(self) -> None:
        """Before the phase: what must already be in place (the operator runs)."""

    def close(self) -> None:
        """After the trial, before its processes are stopped: end what the scenario
        itself started (client traffic)."""

    def enter(self, phase: str) -> None:
        raise NotImplementedError

    def past(self, phase: str) -> bool:
        """Whether the phase already finished (the fault came too late for it)."""
        raise NotImplementedError

    def settled(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self) -> list[Violation]:
        raise NotImplementedError


class TrainingScenario(Scenario):
    """One local-mode Experiment trains once and registers model v1."""

    name = "classifier"
    models = 1  # model versions the settled world holds

    def _status(self) -> dict[str, Any]:
        return (self.cluster.get("exp", self.name, self.ns) or {}).get("status") or {}

    def _workdir(self) -> Path | None:
        wd = (self._status().get("currentRun") or {}).get("workdir")
        return Path(wd) if wd else None

    def _apply(self, revision: str | None = None) -> None:
        doc = training_experiment(self.name)
        if revision:
            doc["metadata"]["annotations"] = {api.ANN_FLOW_REVISION: revision}
        self.cluster.apply(doc, self.ns)

    def prepare(self) -> None:
        self.models = 1
        if self.phase == "flow-revision-launch":
            self._apply("a1a1a1a1a1a1a1a1")
            deadline = time.monotonic() + 240
            while not (self.settled() and self._status().get("models")):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"v1 never trained: {self.describe()}")
                time.sleep(0.25)
            self.models = 2

    def enter(self, phase: str) -> None:
        self._apply("b2b2b2b2b2b2b2b2" if phase == "flow-revision-launch" else None)
        if phase in ("run-end", "model-registration"):
            # the flow's last step has begun / the run's process has written its result
            wanted = "progress.json" if phase == "run-end" else "result.json"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                wd = self._workdir()
                if wd is not None and (wd / wanted).exists() and (
                        wanted == "result.json" or _step(wd) == "end"):
                    return
                if self._status().get("models"):
                    return  # missed it (slow poll): the trial records in_window=False
                time.sleep(0.05)
            raise TimeoutError(f"phase {phase} never began: {self.describe()}")

    def past(self, phase: str) -> bool:
        st = self._status()
        if phase in ("training-launch", "flow-revision-launch"):
            current = st.get("currentRun") or {}
            return bool((current.get("launched") and current.get("pathspec"))
                        or len(st.get("runs") or []) >= self.models)
        return len(st.get("models") or []) >= self.models

    def settled(self) -> bool:
        obj = self.cluster.get("exp", self.name, self.ns) or {}
        st = obj.get("status") or {}
        return (st.get("phase") in (api.Phase.SUCCEEDED, api.Phase.FAILED)
                and not st.get("currentRun") and len(st.get("runs") or []) >= self.models
                and st.get("observedGeneration") == obj["metadata"]["generation"])

    def describe(self) -> str:
        st = self._status()
        return json.dumps({k: st.get(k) for k in ("phase", "currentRun", "latestModel")})

    def launches(self, uid: str) -> list[LaunchRecord]:
        return launches_of(self.root / "state" / "metaflow", uid)

    def check(self) -> list[Violation]:
        obj = self.cluster.get("exp", self.name, self.ns)
        assert obj is not None
        st = obj.get("status") or {}
        launches = self.launches(obj["metadata"]["uid"])
        out = one_run_per_key(launches) + runs_accounted(launches, st)
        out += model_versions(st.get("models") or [])
        out += retrain_per_episode(st.get("runs") or [])
        if st.get("phase") != api.Phase.SUCCEEDED or len(st.get("models") or []) != self.models:
            ready = condition(obj, "Ready") or {}
            out.append(Violation("trained-once", f"phase {st.get('phase')}, "
                                 f"{len(st.get('models') or [])} models: {ready.get('message')}"))
        return out


def _step(workdir: Path) -> str | None:
    try:
        return json.loads((workdir / "progress.json").read_text()).get("step")
    except (OSError, ValueError):
        return None


def launches_of(datastore_root: Path, uid: str) -> list[LaunchRecord]:
    """Every launch of the Experiment ``uid``: the local backend's launch index (written
    before a launcher starts) merged with Metaflow's own runs tagged with the uid (what
    ran, whoever started it)."""
    out: dict[str, LaunchRecord] = {}
    index = datastore_root / ".trellis" / "launches"
    for entry in sorted(index.glob("*.json")) if index.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(entry.read_text())
            tags = doc.get("tags") or {}
            if tags.get("trellis.uid") != uid:
                continue
            wd = Path(doc["workdir"])
            pathspec = ""
            with contextlib.suppress(OSError, ValueError):
                pathspec = json.loads((wd / "run.json").read_text()).get("pathspec") or ""
            out[pathspec or str(wd)] = LaunchRecord.from_tags(tags, pathspec, str(wd))
    if (datastore_root / ".metaflow").is_dir():
        from metaflow import Metaflow, metadata, namespace

        metadata(f"local@{datastore_root}")
        namespace(None)
        for flow in Metaflow():
            for run in flow.runs(f"trellis.uid:{uid}"):
                if run.pathspec in out:
                    continue
                tags = dict(t.split(":", 1) for t in run.tags if ":" in t)
                out[run.pathspec] = LaunchRecord.from_tags(tags, run.pathspec, run.pathspec)
    return list(out.values())


class SpecRepoScenario(Scenario):
    """A SpecRepository with a few Experiments; the next commit changes every one, drops
    one and adds one, so an apply cut short leaves a visible mix of two commits."""

    size = 12

    def __init__(self, cluster: Cluster, ns: str, root: Path, phase: str) -> None:
        super().__init__(cluster, ns, root, phase)
        self.repo = GitRepo(root / "farm")
        self.commits: dict[str, dict[ObjectKey, dict[str, Any]]] = {}

    def _commit(self, names: list[str], lr: float, message: str) -> str:
        for f in (self.repo.work / "specs").glob("*.yaml") if (
                self.repo.work / "specs").is_dir() else []:
            f.unlink()
        objs = {}
        for name in names:
            self.repo.write(f"specs/{name}.yaml", repo_experiment(name, lr))
            objs[("Experiment", name)] = {"parameters": {"lr": lr, "epochs": 4},
                                          "backend": "kubernetes"}
        sha = self.repo.commit_and_push(message)
        self.commits[sha] = objs
        return sha

    def _request_sync(self) -> None:
        self.cluster.kubectl("annotate", "specrepo", "farm", "-n", self.ns, "--overwrite",
                             f"{api.ANN_RECONCILE_REQUESTED}={time.time_ns()}")

    def _repo(self) -> dict[str, Any]:
        return self.cluster.get("specrepo", "farm", self.ns) or {}

    def prepare(self) -> None:
        self.repo.write("flows/pumpkin_flow.py", FLOW)
        first = self._commit([f"exp-{i}" for i in range(self.size)], 0.01, "the farm")
        self.cluster.apply({
            "apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "SpecRepository",
            "metadata": {"name": "farm"},
            "spec": {"url": str(self.repo.remote), "ref": {"branch": "main"},
                     "path": "specs", "interval": "1h"}}, self.ns)
        deadline = time.monotonic() + 60
        while self._repo().get("status", {}).get("lastSyncedCommit") != first:
            if time.monotonic() > deadline:
                raise TimeoutError(f"first commit never synced: {self._repo().get('status')}")
            time.sleep(0.2)
        self.head = first

    def enter(self, phase: str) -> None:
        names = [f"exp-{i}" for i in range(1, self.size + 1)]  # exp-0 goes, one comes
        self.head = self._commit(names, 0.02, "every lr changes")
        self._request_sync()

    def past(self, phase: str) -> bool:
        return self._repo().get("status", {}).get("lastSyncedCommit") == self.head

    def settled(self) -> bool:
        obj = self._repo()
        st = obj.get("status") or {}
        ready = condition(obj, "Ready") or {}
        return st.get("lastSyncedCommit") == self.head and ready.get("status") == "True"

    def describe(self) -> str:
        st = self._repo().get("status") or {}
        return json.dumps({k: st.get(k) for k in ("lastSyncedCommit", "lastAttemptedCommit",
                                                  "errors")}) + f" head {self.head}"

    def live(self) -> dict[ObjectKey, dict[str, Any]]:
        items = json.loads(self.cluster.kubectl(
            "get", "experiments", "-n", self.ns, "-o", "json",
            "-l", f"{api.LABEL_SPECREPO}=farm").stdout)["items"]
        return {("Experiment", o["metadata"]["name"]): o["spec"] for o in items}

    def check(self) -> list[Violation]:
        return one_commit(self.live(), self.commits, self.head)


