"""Trials: one scenario per trial, in a namespace, state dir and operator of its own;
the fault dealt at a seeded moment inside the phase's window; then settle and check."""

from __future__ import annotations

import datetime as dt
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller import localwork
from controller.devcluster.cluster import ClusterError, DevCluster
from controller.processes import free_port
from tests.support.chaos.faults import etcd_outage, restart_apiserver
from tests.support.chaos.scenarios import Scenario, SpecRepoScenario, TrainingScenario
from tests.support.chaos.serving import CanaryScenario, DriftScenario
from tests.support.kube import Cluster, OperatorProcess, healthy


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
    scenario: str  # a key of SCENARIOS
    fault: str  # "operator-kill" | "apiserver-restart" | "etcd-outage"
    window_s: float  # the window when it is not measured (Harness(calibrate=False))


PHASES: dict[str, Phase] = {p.name: p for p in [
    Phase("training-launch", "training", "operator-kill", 0.5),
    Phase("run-end", "training", "operator-kill", 1.5),
    Phase("model-registration", "training", "operator-kill", 1.0),
    Phase("specrepo-apply", "specrepo", "operator-kill", 0.4),
    # v1 trained, then a flow-code-only change (new flow revision, same generation)
    Phase("flow-revision-launch", "training", "operator-kill", 0.5),
    Phase("apiserver-restart", "training", "apiserver-restart", 8.0),
    Phase("etcd-outage", "training", "etcd-outage", 8.0),
    Phase("apiserver-restart-specrepo", "specrepo", "apiserver-restart", 0.4),
    Phase("etcd-outage-specrepo", "specrepo", "etcd-outage", 0.4),
    # a registered v2 canaried to promotion: anywhere in the rollout, at its last step
    Phase("canary-step", "canary", "operator-kill", 8.0),
    Phase("canary-promotion", "canary", "operator-kill", 4.0),
    Phase("canary-rollback", "canary", "operator-kill", 6.0),
    # white pumpkins arrive: from the onset to the retrain's launch; the retrain run
    Phase("drift-episode", "drift", "operator-kill", 20.0),
    Phase("retrain", "drift", "operator-kill", 15.0),
]}

SCENARIOS: dict[str, type[Scenario]] = {"training": TrainingScenario,
                                        "specrepo": SpecRepoScenario,
                                        "canary": CanaryScenario, "drift": DriftScenario}


class Harness:
    """Trials against one dev cluster, each in a namespace, state dir and operator of its
    own, stopped (with everything it started) before the next one begins.

    With ``calibrate`` (the bench), each phase is first run once undisturbed: how long it
    took from its start to ``past()`` becomes its window, so the drawn moments fall while
    the phase is in motion on this machine, whatever its speed. That control run is
    checked against the invariants too and kept in ``calibrations``.
    """

    def __init__(self, dev: DevCluster, work: Path, *, settle_timeout: float = 240.0,
                 quiet_s: float = 2.0, calibrate: bool = False,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.dev = dev
        self.cluster = Cluster(dev)
        self.work = work
        self.settle_timeout = settle_timeout
        self.quiet_s = quiet_s
        self.calibrate = calibrate
        self.log = log
        self.counter = 0
        self.windows: dict[str, float] = {}  # measured, per phase
        self.calibrations: list[Trial] = []
        self.on_trial: Callable[[list[Trial]], None] | None = None  # after each trial

    # ------------------------------------------------------------------ run
    def run(self, plan: Iterable[tuple[str, int]], seed: int) -> list[Trial]:
        """``plan``: (phase name, trials); one RNG seeded with ``seed`` draws every moment."""
        rng = random.Random(seed)
        out = []
        for name, n in plan:
            if self.calibrate and name not in self.windows:
                control = self.trial(PHASES[name], 0, fault=False)
                self.calibrations.append(control)
                self.log(f"[chaos] {name} control run: phase took {control.delay_s:.2f}s, "
                         f"violations={control.violations} error={control.error}")
                if control.error is None:
                    self.windows[name] = max(control.delay_s, 0.05)
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

    def window(self, phase: Phase) -> float:
        return self.windows.get(phase.name, phase.window_s)

    def trial(self, phase: Phase, seed: int, *, fault: bool = True) -> Trial:
        """One trial; without ``fault`` a control run whose ``delay_s`` is how long the
        phase took (enter to ``past()``)."""
        self.counter += 1
        index = self.counter
        rng = random.Random(seed)
        ns = f"chaos-{index}-{phase.name}"[:50].rstrip("-")
        root = self.work / ns
        root.mkdir(parents=True, exist_ok=True)
        self.cluster.create_namespace(ns)
        port = free_port()
        scenario = SCENARIOS[phase.scenario](self.cluster, ns, root, phase.name)
        env = {"KUBECONFIG": str(self.dev.kubeconfig), "TRELLIS_STATE_DIR": str(root / "state"),
               "TRELLIS_RESYNC_SECONDS": "5", "TRELLIS_METRICS_PORT": str(port),
               "TRELLIS_REQUEST_LOGGER_PORT": "-1", "TRELLIS_WEBHOOK_PORT": "-1",
               "TRELLIS_LOG_FORMAT": "text", **scenario.env}
        trial = Trial(phase.name, phase.fault if fault else "none", index, seed,
                      rng.uniform(0, self.window(phase)) if fault else 0.0, in_window=False)
        ops: list[OperatorProcess] = []
        try:
            ops.append(OperatorProcess(env, root / "operator-1.log", ["-n", ns]).start())
            self._wait_healthy(ops[-1], port)  # the phase starts with the operator up
            scenario.prepare()
            scenario.enter(phase.name)
            started = fault_at = time.monotonic()
            if not fault:
                deadline = started + self.settle_timeout
                while not _quietly(lambda: scenario.past(phase.name)):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"phase {phase.name} never finished: "
                                           f"{scenario.describe()}")
                    time.sleep(0.02)
                trial.delay_s = time.monotonic() - started
            else:
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
            scenario.close()
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
