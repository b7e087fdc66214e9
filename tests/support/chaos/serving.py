"""Serving scenarios for the fault harness: a canary rollout in local mode (real
``seldon-core-microservice`` processes behind the router, townsfolk traffic through it)
and a whole drift episode (white pumpkins, detection, one retrain, its canary).

Besides the rollout invariants they check what a user of the endpoint would see: the
stable predictor never failed a request while the operator was killed, and the model
servers running are exactly those the serving state records (a server started by a
killed operator and forgotten would be a leak).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from controller import api, localwork
from controller.demo.traffic import Townsfolk
from controller.serving.local_state import load_state
from tests.support.chaos.invariants import (
    Violation,
    canary_steps,
    model_versions,
    one_run_per_key,
    retrain_per_episode,
    rollout_analyses,
    runs_accounted,
    servers_accounted,
)
from tests.support.chaos.scenarios import Scenario, launches_of
from tests.support.kube import condition
from tests.support.specs import base

NAME = "classifier"


class ServingScenario(Scenario):
    """What the two serving scenarios share: the objects, the traffic, the checks."""

    traffic: Townsfolk | None = None

    def _exp(self) -> dict[str, Any]:
        return self.cluster.get("exp", NAME, self.ns) or {}

    def _mdep(self) -> dict[str, Any]:
        return self.cluster.get("mdep", NAME, self.ns) or {}

    def _wait(self, fn, what: str, timeout: float = 240.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = fn()
            except Exception:
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} never happened: {self.describe()}")
            time.sleep(0.1)

    def _serve(self, **traffic: Any) -> None:
        st = self._wait(lambda: (s := self._mdep().get("status") or {}).get("phase")
                        == "Serving" and s, "v1 serving")
        self.traffic = Townsfolk(st["endpoint"], **traffic)
        self.traffic.start()

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()

    def serving_dir(self) -> Path:
        return self.root / "state" / "serving" / self.ns / NAME

    def servers_settled(self) -> bool:
        state = load_state(self.serving_dir())
        return not state.retiring and len(state.predictors) == 1

    def describe(self) -> str:
        st = self._mdep().get("status") or {}
        keys = ("phase", "stableVersion", "canary", "rejectedVersions")
        return json.dumps({k: st.get(k) for k in keys}, default=str)[:1500]

    def serving_checks(self) -> list[Violation]:
        st = self._mdep().get("status") or {}
        out = []
        for analyses in rollout_analyses(st):
            out += canary_steps(analyses)
        versions = [r.get("version") for r in st.get("rollouts") or []]
        out += [Violation("one-rollout-per-version", f"v{v} rolled out {versions.count(v)} "
                          "times") for v in sorted(set(versions)) if versions.count(v) > 1]
        state = load_state(self.serving_dir())
        recorded = {p.port for p in state.predictors.values()}
        live = {int(p.args[p.args.index("--http-port") + 1])
                for p in localwork.find([self.root / "state"])
                if "--http-port" in p.args and p.pid == p.sid}
        out += servers_accounted(live, recorded)
        if self.traffic is not None:
            failed = {k: n for k, n in self.traffic.tally.requests.items()
                      if k[0] == "stable" and k[1] != 200}
            if failed:
                out.append(Violation("stable-served", f"the stable predictor failed "
                                     f"requests: {failed}"))
        return out


class CanaryScenario(ServingScenario):
    """v1 serves under steady traffic; v2 is registered and canaried (50 %, 100 %) to
    promotion — or, in ``canary-rollback``, fails half its requests and is rolled back."""

    def _register(self, versions: dict[int, Path]) -> None:
        entries = [{"version": v, "artifactUri": f"file://{p}",
                    "referenceUri": f"file://{p}/reference.json", "run": f"PumpkinFlow/{v}"}
                   for v, p in sorted(versions.items())]
        self.cluster.kubectl("patch", "exp", NAME, "-n", self.ns, "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": {"models": entries}}))

    def prepare(self) -> None:
        from tests.support.fake_model import write_model_version

        exp = base("Experiment")
        exp["spec"]["flow"]["file"] = "flows/not-here.py"  # versions are registered by hand
        self.cluster.apply(exp, self.ns)
        self.models = {1: write_model_version(self.root / "v1", seed=1)}
        bad = self.phase == "canary-rollback"
        self.models[2] = write_model_version(self.root / "v2", seed=2,
                                             fail_fraction=0.5 if bad else 0.0)
        self._register({1: self.models[1]})
        mdep = base("ModelDeployment")
        mdep["spec"]["canary"] = {"steps": [50, 100], "interval": "3s",
                                  "analysis": {"minRequests": 5, "maxErrorRate": 0.05,
                                               "maxLatencyP99Ms": 5000,
                                               "maxPredictionShift": 0.6}}
        mdep["spec"]["drift"] = {"enabled": False}
        self.cluster.apply(mdep, self.ns)
        self._serve(batch=1, rate=10, seed=3, feedback=False)

    def enter(self, phase: str) -> None:
        self._register(self.models)
        if phase == "canary-promotion":  # the last step has begun
            self._wait(lambda: ((self._mdep().get("status") or {}).get("canary") or {})
                       .get("weight") == 100 or self.past(phase), "the last canary step")

    def past(self, phase: str) -> bool:
        st = self._mdep().get("status") or {}
        if phase == "canary-rollback":
            return any(r.get("version") == 2 for r in st.get("rejectedVersions") or [])
        return st.get("stableVersion") == "v2" and not st.get("canary")

    def settled(self) -> bool:
        obj = self._mdep()
        st = obj.get("status") or {}
        return (self.past(self.phase) and st.get("phase") == "Serving"
                and st.get("observedGeneration") == obj["metadata"]["generation"]
                and self.servers_settled())

    def check(self) -> list[Violation]:
        st = self._mdep().get("status") or {}
        out = self.serving_checks()
        outcomes = [r.get("outcome") for r in st.get("rollouts") or [] if r.get("version") == 2]
        want = "rolledBack" if self.phase == "canary-rollback" else "promoted"
        if outcomes != [want]:
            out.append(Violation("rollout-outcome", f"v2's rollouts ended {outcomes}, "
                                 f"wanted one {want}"))
        return out


class DriftScenario(ServingScenario):
    """v1 trained and served under orange-pumpkin traffic with feedback; then white
    pumpkins: drift is detected, one retrain runs, v2 is canaried and promoted.

    ``drift-episode`` aims between the onset and the retrain's launch (detection, the
    retrain request, the feedback export); ``retrain`` aims at the retrain run itself.
    """

    window = 150
    env: ClassVar[dict[str, str]] = {"TRELLIS_DRIFT_INTERVAL_SECONDS": "1",
                                     "TRELLIS_RETRAIN_MIN_LABELS": "200"}

    def prepare(self) -> None:
        exp = base("Experiment")
        exp["spec"]["retrain"] = {"cooldownSeconds": 0, "includeFeedback": True}
        mdep = base("ModelDeployment")
        mdep["spec"]["canary"] = {"steps": [50, 100], "interval": "4s",
                                  "analysis": {"minRequests": 5, "maxErrorRate": 0.05,
                                               "maxLatencyP99Ms": 5000,
                                               "maxPredictionShift": 0.6}}
        mdep["spec"]["drift"] = {"enabled": True, "test": "ks", "window": self.window,
                                 "minSamples": 100, "pValue": 0.0001, "action": "retrain",
                                 "cooldown": "0s"}
        self.cluster.apply(exp, self.ns)
        self.cluster.apply(mdep, self.ns)
        self._serve(batch=4, rate=5, seed=21)
        self._wait(lambda: ((self._mdep().get("status") or {}).get("drift") or {})
                   .get("samples", 0) >= self.window, "a full window of orange pumpkins")

    def _retrain_launched(self) -> bool:
        st = self._exp().get("status") or {}
        current = st.get("currentRun") or {}
        return bool((current.get("trigger") and current.get("launched"))
                    or any(r.get("trigger") for r in st.get("runs") or []))

    def enter(self, phase: str) -> None:
        assert self.traffic is not None
        self.traffic.set_mix("white")
        if phase == "retrain":
            self._wait(self._retrain_launched, "the retrain's launch")

    def past(self, phase: str) -> bool:
        if phase == "drift-episode":
            return self._retrain_launched()
        return len((self._exp().get("status") or {}).get("models") or []) >= 2

    def settled(self) -> bool:
        exp, mdep = self._exp(), self._mdep()
        est, mst = exp.get("status") or {}, mdep.get("status") or {}
        return (mst.get("stableVersion") == "v2" and not mst.get("canary")
                and est.get("phase") == api.Phase.SUCCEEDED and not est.get("currentRun")
                and self.servers_settled())

    def describe(self) -> str:
        est = self._exp().get("status") or {}
        return super().describe() + " experiment " + json.dumps(
            {k: est.get(k) for k in ("phase", "currentRun", "retrain")}, default=str)[:800]

    def check(self) -> list[Violation]:
        exp, mdep = self._exp(), self._mdep()
        est = exp.get("status") or {}
        launches = launches_of(self.root / "state" / "metaflow", exp["metadata"]["uid"])
        out = one_run_per_key(launches) + runs_accounted(launches, est)
        out += model_versions(est.get("models") or [])
        out += retrain_per_episode(est.get("runs") or [])
        episodes = {r.get("trigger") for r in est.get("runs") or [] if r.get("trigger")}
        if len(episodes) != 1:
            out.append(Violation("one-episode", f"white pumpkins retrained for episodes "
                                 f"{sorted(episodes)}, wanted one"))
        if condition(mdep, "DriftDetected") and (mdep.get("status") or {}).get(
                "drift", {}).get("referenceVersion") != 2:
            out.append(Violation("drift-reference", "drift is still judged against v1"))
        return out + self.serving_checks()
