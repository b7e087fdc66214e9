"""Fault harness: break the world at a random moment of a chosen phase, let it settle,
check that nothing was done twice, skipped or left half-way.

The operator's promise (``docs/architecture.md``) is that everything it needs to resume
lives on the resources' status and on Metaflow run tags, so a SIGKILL at *any* moment
neither duplicates a run nor loses a model version, and that an API server restart or
an etcd outage only delays it. This module turns that promise into trials:

* a **phase** is a scenario (an Experiment training in local mode, a SpecRepository
  applying a commit) plus the moment to aim at (launch, run end, registration, apply);
* a **fault** is a real SIGKILL of the operator process (restarted at once), a real
  restart of the kube-apiserver process, or etcd stopped for 10 s and started again;
* the moment is drawn from a seeded RNG inside the phase's window, so a failing trial
  is repeatable from its seed;
* the **invariants** are pure functions over what the world recorded (statuses,
  Metaflow launches, the live objects and the commits pushed): unit-tested on crafted
  violations in ``tests/unit/test_chaos_invariants.py``, so a harness that reports 0
  violations is known to be able to report more.

Used by ``tests/e2e/test_chaos.py`` (a small fixed-seed slice) and
``bench/chaos_bench.py`` (``make bench`` suite ``chaos``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller import api, localwork
from controller.devcluster.cluster import ClusterError, DevCluster
from controller.processes import free_port, pid_alive
from tests.support.gitrepo import FLOW, GitRepo
from tests.support.kube import Cluster, OperatorProcess, condition, healthy

# --------------------------------------------------------------------------- invariants


@dataclass(frozen=True)
class Violation:
    """One broken invariant, said so that a reader can find the objects involved."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass(frozen=True)
class LaunchRecord:
    """One launched Metaflow run of an Experiment, as its tags name it."""

    generation: int
    revision: str
    trigger: str
    attempt: int
    pathspec: str  # "" when the run never registered (killed before it started)
    where: str  # workdir or pathspec: what a reader would look at

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.generation, self.revision, self.trigger)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], pathspec: str, where: str) -> LaunchRecord:
        return cls(int(tags.get("trellis.generation") or 0),
                   tags.get("trellis.flow-revision") or "", tags.get("trellis.trigger") or "",
                   int(tags.get("trellis.attempt") or 0), pathspec, where)


def one_run_per_key(launches: Sequence[LaunchRecord]) -> list[Violation]:
    """At most one launch per generation × flow revision × episode × attempt.

    Two launches of one attempt are the duplicate a restart must never cause (the
    two-phase launch exists for it); distinct attempts are the retry policy's business.
    """
    seen: dict[tuple[int, str, str, int], set[str]] = defaultdict(set)
    for launch in launches:
        seen[(*launch.key, launch.attempt)].add(launch.pathspec or launch.where)
    return [Violation("one-run-per-key",
                      f"generation {g}, revision {r or '-'}, episode {t or '-'}, attempt {a}: "
                      f"{len(where)} runs ({', '.join(sorted(where))})")
            for (g, r, t, a), where in sorted(seen.items()) if len(where) > 1]


def runs_accounted(launches: Sequence[LaunchRecord], status: Mapping[str, Any]
                   ) -> list[Violation]:
    """Every launched run is on the status (finished in ``runs`` or ``currentRun``), and
    each key has at most one successful run there.

    A run the status does not know of was launched by an operator that then forgot it:
    the next one would launch again, which is a duplicate in waiting.
    """
    runs = list(status.get("runs") or [])
    known = {r.get("pathspec") for r in runs} | {(status.get("currentRun") or {}).get(
        "pathspec")}
    out = [Violation("run-recorded", f"run {launch.pathspec} (generation {launch.generation}, "
                     f"attempt {launch.attempt}) is not on the status")
           for launch in launches if launch.pathspec and launch.pathspec not in known]
    succeeded: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    for r in runs:
        if r.get("phase") == api.Phase.SUCCEEDED:
            key = (int(r.get("generation") or 0), r.get("flowRevision") or "",
                   r.get("trigger") or "")
            succeeded[key].append(r.get("pathspec") or "?")
    out += [Violation("one-success-per-key", f"generation {g}, revision {rev or '-'}, "
                      f"episode {t or '-'} succeeded {len(p)} times: {', '.join(p)}")
            for (g, rev, t), p in sorted(succeeded.items()) if len(p) > 1]
    return out


def model_versions(models: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """Versions are 1, 2, ... n in order: no gap, no duplicate, no run registered twice."""
    versions = [int(m.get("version") or 0) for m in models]
    out = []
    if versions != list(range(1, len(versions) + 1)):
        out.append(Violation("model-versions", f"versions {versions} are not 1..{len(versions)}"))
    by_run: dict[str, list[int]] = defaultdict(list)
    for m in models:
        by_run[str(m.get("run") or "")].append(int(m.get("version") or 0))
    out += [Violation("model-per-run", f"run {run} registered as versions {v}")
            for run, v in sorted(by_run.items()) if run and len(v) > 1]
    return out


def canary_steps(analyses: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """One rollout's analyses, oldest first: no step skipped or decided twice.

    A step is analysed again only after an inconclusive verdict (the window is
    extended); a pass moves to the next step, a fail ends the rollout.
    """
    out = []
    prev: Mapping[str, Any] | None = None
    for i, a in enumerate(analyses):
        step = int(a.get("step", 0))
        if prev is None:
            if step != 0:
                out.append(Violation("canary-step", f"analysis {i}: first analysis at step "
                                     f"{step}, not 0"))
        else:
            pstep, verdict = int(prev.get("step", 0)), prev.get("verdict")
            if verdict == "fail":
                out.append(Violation("canary-decided-twice", f"analysis {i} at step {step} "
                                     f"follows a rollback at step {pstep}"))
            elif verdict == "pass" and step == pstep:
                out.append(Violation("canary-decided-twice", f"step {step} decided twice "
                                     f"(analyses {i - 1} and {i})"))
            elif verdict == "pass" and step != pstep + 1:
                out.append(Violation("canary-step", f"analysis {i}: step {pstep} passed, "
                                     f"then step {step} (skipped or went back)"))
            elif verdict == "inconclusive" and step != pstep:
                out.append(Violation("canary-step", f"analysis {i}: step {pstep} was "
                                     f"inconclusive, then step {step}"))
        prev = a
    return out


def rollout_analyses(status: Mapping[str, Any]) -> list[list[Mapping[str, Any]]]:
    """Every rollout's analyses on a ModelDeployment's status (finished ones, then the
    canary in flight)."""
    out = [list(r.get("analyses") or []) for r in status.get("rollouts") or []]
    if status.get("canary"):
        out.append(list(status["canary"].get("analyses") or []))
    return out


def retrain_per_episode(runs: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """A drift episode retrains once: all its runs share one key, and one succeeds."""
    keys: dict[str, set[tuple[int, str]]] = defaultdict(set)
    ok: dict[str, int] = defaultdict(int)
    for r in runs:
        trigger = r.get("trigger") or ""
        if not trigger:
            continue
        keys[trigger].add((int(r.get("generation") or 0), r.get("flowRevision") or ""))
        ok[trigger] += r.get("phase") == api.Phase.SUCCEEDED
    out = [Violation("retrain-per-episode", f"episode {t} retrained under {len(k)} keys")
           for t, k in sorted(keys.items()) if len(k) > 1]
    out += [Violation("retrain-per-episode", f"episode {t} retrained {n} times")
            for t, n in sorted(ok.items()) if n > 1]
    return out


ObjectKey = tuple[str, str]  # (kind, name)


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` holds everything ``wanted`` says (the API server adds defaults)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v)
                                              for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(
            contains(a, b) for a, b in zip(live, wanted, strict=True))
    if isinstance(wanted, bool) or isinstance(live, bool):
        return live is wanted
    if isinstance(wanted, int | float) and isinstance(live, int | float):
        return float(live) == float(wanted)
    return live == wanted


def commits_matching(live: Mapping[ObjectKey, Mapping[str, Any]],
                     commits: Mapping[str, Mapping[ObjectKey, Mapping[str, Any]]]) -> list[str]:
    """The commits whose objects are exactly the live ones: the same set of objects, each
    live spec holding every field the commit gives it."""
    return [sha for sha, objs in commits.items()
            if set(objs) == set(live) and all(contains(live[k], objs[k]) for k in objs)]


def one_commit(live: Mapping[ObjectKey, Mapping[str, Any]],
               commits: Mapping[str, Mapping[ObjectKey, Mapping[str, Any]]],
               head: str | None = None) -> list[Violation]:
    """The cluster's objects equal exactly one commit (with ``head``: that commit)."""
    matching = commits_matching(live, commits)
    if not matching:
        return [Violation("one-commit", "the live objects match no commit: "
                          f"{sorted(f'{k}/{n}' for k, n in live)}")]
    if head is not None and head not in matching:
        return [Violation("one-commit", f"settled at {matching[0][:12]}, not the head "
                          f"{head[:12]}")]
    return []


# ------------------------------------------------------------------------------ faults


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _kill_and_reap(pid: int, sig: int, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours when this process started the cluster
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not exit after signal {sig}")


def _respawn(dev: DevCluster, cmd: list[str], log_name: str) -> int:
    with open(dev.dir / log_name, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _set_pid(dev: DevCluster, **pids: int) -> None:
    data = json.loads(dev.state_file.read_text())
    data.update(pids)
    dev.state_file.write_text(json.dumps(data, indent=2))


def _supervise(dev: DevCluster, cmd: list[str], log_name: str, key: str,
               timeout: float = 90.0) -> None:
    """Start ``cmd`` and restart it while it exits early, as a supervisor (systemd, the
    kubelet) would: a client reconnecting in a loop can hold the freed port for a moment
    (an ephemeral source port, even a TCP self-connect), and the server then exits with
    "bind: address already in use"."""
    deadline = time.monotonic() + timeout
    while True:
        pid = _respawn(dev, cmd, log_name)
        _set_pid(dev, **{key: pid})
        while pid_alive(pid) and not dev.running() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if dev.running():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dev cluster is not ready {timeout:.0f}s after the fault")
        time.sleep(0.5)  # it exited: start it again


def restart_apiserver(dev: DevCluster) -> None:
    """SIGKILL the kube-apiserver and start it again with the same command line (same
    port, same etcd): every watch and connection of the operator breaks at once."""
    st = dev.state()
    assert st is not None
    cmd = _cmdline(st.apiserver_pid)
    _kill_and_reap(st.apiserver_pid, signal.SIGKILL)
    _supervise(dev, cmd, "apiserver.log", "apiserver_pid")


def etcd_outage(dev: DevCluster, seconds: float = 10.0) -> None:
    """Stop etcd (SIGTERM, its data kept), keep it down ``seconds``, start it again with
    the same command line: the API server answers 5xx/timeouts meanwhile."""
    st = dev.state()
    assert st is not None
    cmd = _cmdline(st.etcd_pid)
    started = time.monotonic()
    _kill_and_reap(st.etcd_pid, signal.SIGTERM)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    _supervise(dev, cmd, "etcd.log", "etcd_pid")


# ----------------------------------------------------------------------------- trials

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


@dataclass
class Trial:
    """One trial's record (a row of the bench's detail, a line of the test's failure)."""

    phase: str
    fault: str
    index: int
    seed: int
    delay_s: float  # the drawn moment, seconds into the phase's window
    in_window: bool  # the phase had not finished yet when the fault hit
    settle_s: float | None = None
    violations: list[str] = field(default_factory=list)
    error: str | None = None

    def ok(self) -> bool:
        return self.error is None and not self.violations


@dataclass
class Phase:
    """A scenario and the moment it aims at."""

    name: str
    scenario: str  # "training" | "specrepo"
    fault: str  # "operator-kill" | "apiserver-restart" | "etcd-outage"
    window_s: float  # the fault lands uniformly in [0, window_s) after the phase starts


PHASES: dict[str, Phase] = {p.name: p for p in [
    # Windows sized to what each phase takes here (a tiny run trains in ~10 s; a sync of
    # a dozen objects applies in well under a second), so most faults land inside.
    Phase("training-launch", "training", "operator-kill", 1.5),
    Phase("run-end", "training", "operator-kill", 2.5),
    Phase("model-registration", "training", "operator-kill", 1.2),
    Phase("specrepo-apply", "specrepo", "operator-kill", 0.8),
    # v1 trained, then a flow-code-only change (new flow revision, same generation)
    Phase("flow-revision-launch", "training", "operator-kill", 1.5),
    Phase("apiserver-restart", "training", "apiserver-restart", 8.0),
    Phase("etcd-outage", "training", "etcd-outage", 8.0),
    Phase("apiserver-restart-specrepo", "specrepo", "apiserver-restart", 0.8),
    Phase("etcd-outage-specrepo", "specrepo", "etcd-outage", 0.8),
]}


class Harness:
    """Trials against one dev cluster, each in a namespace, state dir and operator of its
    own, stopped (with everything it started) before the next one begins."""

    def __init__(self, dev: DevCluster, work: Path, *, settle_timeout: float = 240.0,
                 quiet_s: float = 2.0, log: Callable[[str], None] = lambda _m: None) -> None:
        self.dev = dev
        self.cluster = Cluster(dev)
        self.work = work
        self.settle_timeout = settle_timeout
        self.quiet_s = quiet_s
        self.log = log
        self.counter = 0
        self.on_trial: Callable[[list[Trial]], None] | None = None  # after each trial

    # ------------------------------------------------------------------ run
    def run(self, plan: Iterable[tuple[str, int]], seed: int) -> list[Trial]:
        """``plan``: (phase name, trials); one RNG seeded with ``seed`` draws every moment."""
        rng = random.Random(seed)
        out = []
        for name, n in plan:
            for _ in range(n):
                trial_seed = rng.randrange(2**31)
                out.append(self.trial(PHASES[name], trial_seed))
                t = out[-1]
                if self.on_trial is not None:
                    self.on_trial(out)
                self.log(f"[chaos] {t.phase} #{t.index}: delay {t.delay_s:.2f}s "
                         f"in_window={t.in_window} settle={t.settle_s} "
                         f"violations={t.violations} error={t.error}")
        return out

    def trial(self, phase: Phase, seed: int) -> Trial:
        self.counter += 1
        index = self.counter
        rng = random.Random(seed)
        ns = f"chaos-{index}-{phase.name}"[:50].rstrip("-")
        root = self.work / ns
        root.mkdir(parents=True, exist_ok=True)
        self.cluster.create_namespace(ns)
        port = free_port()
        env = {"KUBECONFIG": str(self.dev.kubeconfig), "TRELLIS_STATE_DIR": str(root / "state"),
               "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_METRICS_PORT": str(port),
               "TRELLIS_REQUEST_LOGGER_PORT": "-1", "TRELLIS_WEBHOOK_PORT": "-1",
               "TRELLIS_LOG_FORMAT": "text"}
        scenario: Scenario = (TrainingScenario if phase.scenario == "training"
                              else SpecRepoScenario)(self.cluster, ns, root, phase.name)
        trial = Trial(phase.name, phase.fault, index, seed, rng.uniform(0, phase.window_s),
                      in_window=False)
        ops: list[OperatorProcess] = []
        try:
            ops.append(OperatorProcess(env, root / "operator-1.log", ["-n", ns]).start())
            self._wait_healthy(ops[-1], port)  # the phase starts with the operator up
            scenario.prepare()
            scenario.enter(phase.name)
            time.sleep(trial.delay_s)
            fault_at = time.monotonic()
            if phase.fault == "operator-kill":
                ops[-1].kill()
                trial.in_window = not scenario.past(phase.name)  # as the killed one left it
                ops.append(OperatorProcess(env, root / "operator-2.log", ["-n", ns]).start())
            else:
                trial.in_window = not scenario.past(phase.name)
                if phase.fault == "apiserver-restart":
                    restart_apiserver(self.dev)
                else:
                    etcd_outage(self.dev)
                fault_at = time.monotonic()  # settle counts from the server's return
            trial.settle_s = self._settle(scenario, fault_at, ops[-1])
            trial.violations = [str(v) for v in scenario.check()]
        except Exception as exc:  # a trial that cannot settle is a finding, not a crash
            trial.error = f"{type(exc).__name__}: {exc}"
        finally:
            for op in ops:
                op.stop()
            localwork.stop(root / "state")
        return trial

    @staticmethod
    def _wait_healthy(op: OperatorProcess, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not healthy(port):
            if op.proc is not None and op.proc.poll() is not None:
                raise RuntimeError(f"the operator exited: {op.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator's /healthz never answered: {op.log()[-2000:]}")
            time.sleep(0.1)

    def _settle(self, scenario: Scenario, since: float, op: OperatorProcess) -> float:
        deadline = since + self.settle_timeout
        while not _quietly(scenario.settled):
            if op.proc is not None and op.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({op.proc.returncode}) after the "
                                   f"fault: {op.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled {self.settle_timeout:.0f}s after the fault: "
                                   f"{scenario.describe()}")
            time.sleep(0.25)
        settled = time.monotonic() - since
        time.sleep(self.quiet_s)  # a late duplicate would show now
        if not scenario.settled():
            raise AssertionError(f"settled, then moved again: {scenario.describe()}")
        return settled


def _quietly(fn: Callable[[], bool]) -> bool:
    """``fn()``, False when kubectl failed (a server just back may answer 503 a moment,
    or not serve the CRDs through discovery yet)."""
    try:
        return fn()
    except (AssertionError, subprocess.SubprocessError, ClusterError):
        return False


class Scenario:
    """What a trial builds, when its phase starts, when the world is settled, and the
    invariants that must then hold."""

    def __init__(self, cluster: Cluster, ns: str, root: Path, phase: str) -> None:
        self.cluster, self.ns, self.root, self.phase = cluster, ns, root, phase

    def prepare(self) -> None:
        """Before the phase: what must already be in place (the operator runs)."""

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


# ----------------------------------------------------------------------------- summary


def summary(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    """Per phase: trials, those whose fault landed inside the window, violations,
    errors (trials that never settled) and the median settle time."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(t.phase for t in trials):
        mine = [t for t in trials if t.phase == name]
        settles = [t.settle_s for t in mine if t.settle_s is not None]
        out[name] = {"fault": mine[0].fault, "trials": len(mine),
                     "in_window": sum(t.in_window for t in mine),
                     "violations": sum(len(t.violations) for t in mine),
                     "errors": sum(t.error is not None for t in mine),
                     "median_settle_s": statistics.median(settles) if settles else None}
    return out


def as_json(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    return [asdict(t) for t in trials]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
