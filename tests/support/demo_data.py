"""A recorded demo timeline for the report's tests, shaped like ``make demo``'s recording.

The farm's story as the demo driver records it: v1 trained and served; a hyperparameter
PR trains v2, promoted in three canary steps (one inconclusive wait); optionally a PR
whose run misses the objective and one whose v3 is rolled back; then white pumpkins
arrive, drift is detected, the retrain's first attempt fails, the second registers a
version that is promoted, and the drift clears. Statuses are computed as functions of
time, so ``demo_data(stop_at=...)`` gives a story cut short exactly as a crashed demo
would leave it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

Row = dict[str, Any]
T0 = 1795790000.0
END = 700.0
NS = "pumpkins"
FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
            "brightness", "saturation", "orangeness", "dark_fraction")
# White pumpkins: how fast each moved feature's p-value falls (decades per second) and
# where it settles once the window is full of them.
DRIFTING = {"saturation": (0.16, 1e-9), "orangeness": (0.13, 3e-8), "mean_b": (0.08, 2e-6),
            "brightness": (0.05, 4e-4)}
DRIFT_ONSET, FIRST_CHECK, CHECK_EVERY = 430.0, 80.0, 10.0
DETECTED, RETRAIN_AT = 450.0, 451.0  # the first check under p/F, and the Experiment's patch
STEPS = (10, 50, 100)
COMMITS = {1: "3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
           2: "8b41e07c2d9f1a3b5c7d9e1f2a4b6c8d0e2f4a6b",
           3: "7c9d3e2a1b0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d",
           4: "e5d1f60b3a2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e"}


def iso(seconds: float) -> str:
    """RFC 3339 time ``seconds`` into the story, at the API server's precision."""
    return dt.datetime.fromtimestamp(T0 + seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epochs(n: int, final_acc: float, seed: int, upto: int | None = None) -> list[Row]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(1, (upto or n) + 1):
        frac = 1 - math.exp(-2.2 * e / n)
        val = 0.5 + (final_acc - 0.5) * frac / (1 - math.exp(-2.2)) + rng.normal(0, 0.006)
        out.append({"epoch": float(e), "loss": round(0.69 * math.exp(-1.6 * e / n) + 0.08
                                                    + rng.normal(0, 0.01), 4),
                    "train_accuracy": round(min(0.995, val + 0.02), 4),
                    "val_accuracy": round(min(0.99, val), 4)})
    return out


def _episode(reference_version: int) -> str:
    moment = dt.datetime.fromtimestamp(T0 + DETECTED, dt.UTC)
    return f"classifier-v{reference_version}-{moment:%Y%m%d-%H%M%S}"


def _script(rollback: bool) -> tuple[list[Row], list[Row], list[Row]]:
    """(runs, rollouts, phases) of the story; versions numbered as they register."""
    runs: list[Row] = [
        dict(id=101, gen=1, trigger="", start=5, end=60, n=4, acc=0.912, out="model"),
        dict(id=102, gen=2, trigger="", start=102, end=160, n=6, acc=0.943, out="model")]
    phases: list[tuple[str, float, float]] = [("Level 0 — train and serve", 0, 95),
                                              ("Level 1 — a PR retrains v2", 95, 270)]
    if rollback:
        runs += [dict(id=103, gen=3, trigger="", start=280, end=310, n=2, acc=0.842,
                      out="objective"),
                 dict(id=104, gen=4, trigger="", start=315, end=370, n=6, acc=0.927,
                      out="model")]
        phases.append(("Level 1 — bad PRs rejected", 270, 420))
    gen = runs[-1]["gen"]
    runs += [dict(id=105, gen=gen, trigger="drift", start=460, end=480, n=6, acc=0.0,
                  out="failed", upto=2),
             dict(id=106, gen=gen, trigger="drift", start=485, end=545, n=6, acc=0.951,
                  out="model")]
    phases.append(("Level 2 — white pumpkins: drift, retrain", 420, END))
    version = 0
    for run in runs:
        run["attempt"] = 2 if run["id"] == 106 else 1
        run["commit"] = COMMITS[run["gen"]]
        if run["out"] == "model":
            version += 1
            run["version"] = version
    by_id = {r["id"]: r for r in runs}
    rollouts = [dict(version=by_id[102]["version"], start=170, verdicts=[
        ("inconclusive", 200), ("pass", 230), ("pass", 245), ("pass", 260)])]
    if rollback:
        rollouts.append(dict(version=by_id[104]["version"], start=380,
                             verdicts=[("fail", 410)]))
    rollouts.append(dict(version=by_id[106]["version"], start=555, verdicts=[
        ("pass", 585), ("pass", 615), ("pass", 645)]))
    episode = _episode(rollouts[0]["version"])
    for run in runs:
        if run["trigger"]:
            run["trigger"] = episode
    return runs, rollouts, [dict(name=n, start=a, end=b) for n, a, b in phases]


def _run_record(run: Row) -> dict[str, Any]:
    failed = run["out"] == "failed"
    epochs = _epochs(run["n"], run["acc"] or 0.9, run["id"], run.get("upto"))
    rec: dict[str, Any] = {
        "pathspec": f"PumpkinFlow/{run['id']}", "generation": run["gen"],
        "attempt": run["attempt"], "phase": "Failed" if failed else "Succeeded",
        "trigger": run["trigger"], "commit": run["commit"], "startedAt": iso(run["start"]),
        "finishedAt": iso(run["end"]), "durationSeconds": float(run["end"] - run["start"]),
        "epochs": epochs, "metrics": {} if failed else {
            "accuracy": run["acc"], "f1": round(run["acc"] - 0.004, 4)}}
    rec["reason"], rec["message"] = {
        "model": ("ModelRegistered", f"model v{run.get('version')} registered: "
                  f"accuracy {run['acc']:.4f} >= 0.9"),
        "objective": ("ObjectiveNotMet", f"objective not met: accuracy {run['acc']:.4f} "
                      "< 0.9; no model registered"),
        "failed": ("RunFailed", "train step exited with code 137 (killed: out of memory)"),
    }[run["out"]]
    return rec


def _analysis(version: int, step: int, verdict: str, at: float) -> dict[str, Any]:
    weight = STEPS[min(step, len(STEPS) - 1)]
    requests = {"inconclusive": 12}.get(verdict, 40 + weight * 3)
    err = {"fail": 0.021}.get(verdict, 0.004 + 0.002 * (version % 2) + 0.001 * step)
    shift = {"fail": 0.42}.get(verdict, 0.05 + 0.01 * step)
    reason = {"inconclusive": f"waiting for traffic: {requests}/20 requests",
              "fail": f"predicted-class distribution shifted by {shift:.2f} (total variation)"
                      " > 0.3 vs stable"}.get(
        verdict, f"{requests} requests, error rate {err:.3f}, p99 {38 + 9 * step}ms, "
                 f"class shift {shift:.2f}")
    return {"step": step, "weight": weight, "verdict": verdict, "reason": reason,
            "requests": requests, "errorRate": err, "latencyP99Ms": 38.0 + 9 * step + version,
            "predictionShift": shift, "at": iso(at)}


def _rollout_state(ro: Row, t: float) -> tuple[Row | None, Row | None]:
    """(canary status or None, finished rollout entry or None) of one rollout at ``t``."""
    if t < ro["start"]:
        return None, None
    step, analyses, step_started = 0, [], ro["start"]
    for verdict, at in ro["verdicts"]:
        if at > t:
            break
        analyses.append(_analysis(ro["version"], step, verdict, at))
        last = step == len(STEPS) - 1
        if verdict == "fail" or (verdict == "pass" and last):
            outcome = "rolledBack" if verdict == "fail" else "promoted"
            return None, {"version": ro["version"], "outcome": outcome,
                          "reason": analyses[-1]["reason"], "startedAt": iso(ro["start"]),
                          "finishedAt": iso(at), "analyses": analyses}
        step += verdict == "pass"
        step_started = at
    return {"version": ro["version"], "modelUri": f"file:///state/models/{ro['version']}",
            "step": step, "weight": STEPS[step], "stepsHash": "5c1e0d2a",
            "startedAt": iso(ro["start"]), "stepStartedAt": iso(step_started),
            "analyses": analyses}, None


def _drift(check: float, reference: int, retrained_at: float, episode: str) -> dict[str, Any]:
    rng = np.random.default_rng(int(check))
    feats: list[Row] = []
    for name in FEATURES:
        p = float(rng.uniform(0.08, 0.95))
        if name in DRIFTING and DRIFT_ONSET < check < retrained_at:
            rate, floor = DRIFTING[name]
            p = min(p, max(floor, 10 ** (math.log10(0.4) - rate * (check - DRIFT_ONSET))))
        p = max(p, 1e-12)
        feats.append({"name": name, "pValue": float(f"{p:.3g}"),
                      "statistic": round(0.05 + 0.9 * (1 - p) ** 8, 4),
                      "psi": round(0.02 + max(0.0, -math.log10(p) - 1) * 0.08, 4)})
    top = min(feats, key=lambda f: f["pValue"])
    detected = top["pValue"] < 0.05 / len(FEATURES)
    drifting = DRIFT_ONSET < check < retrained_at
    labelled = int(min(200, (check - 100) * 1.5)) if check > 100 else 0
    acc = 0.94 - (min(0.26, (check - DRIFT_ONSET) * 0.004) if drifting else 0.0)
    status: dict[str, Any] = {
        "summary": f"{'drift' if detected else 'none'} {top['name']} p={top['pValue']:.2g}",
        "detected": detected, "test": "ks", "window": 200,
        "samples": int(min(200, (check - 75) * 4)), "referenceVersion": reference,
        "checkedAt": iso(check), "features": feats}
    if labelled:
        status |= {"liveAccuracy": round(acc, 3), "labelledSamples": labelled}
    if check >= DETECTED:  # an ended episode keeps its id on the status
        status |= {"episode": episode, "detectedAt": iso(DETECTED), "retrainRequested": True}
    if check >= RETRAIN_AT:  # the request, on the deployment's own status
        status["retrain"] = {"episode": episode, "requestedAt": iso(RETRAIN_AT),
                             "experiment": "classifier", "reason": "DriftDetected",
                             "window": 200}
    return status


class _Story:
    """The recorded objects' statuses as functions of time."""

    def __init__(self, rollback: bool) -> None:
        self.runs, self.rollouts, self.phases = _script(rollback)
        self.episode = self.runs[-1]["trigger"]
        self.promotions = {}
        for ro in self.rollouts:
            _, done = _rollout_state(ro, END)
            if done and done["outcome"] == "promoted":
                self.promotions[ro["version"]] = ro["verdicts"][-1][1]
        self.retrained_at = self.promotions.get(self.runs[-1]["version"], math.inf)

    def experiment(self, t: float) -> dict[str, Any]:
        runs = [_run_record(r) for r in self.runs if r["end"] <= t]
        models = [{"version": r["version"], "run": f"PumpkinFlow/{r['id']}",
                   "artifactUri": f"file:///state/models/{r['version']}/model.pt",
                   "commit": r["commit"], "createdAt": iso(r["end"]),
                   "metrics": {"accuracy": r["acc"]}, **({"trigger": r["trigger"]}
                                                         if r["trigger"] else {})}
                  for r in self.runs if r["end"] <= t and r["out"] == "model"]
        current = next((r for r in self.runs if r["start"] <= t < r["end"]), None)
        status: dict[str, Any] = {
            "observedGeneration": max([r["gen"] for r in self.runs if r["start"] <= t] or [1]),
            "phase": "Running" if current else ("Succeeded" if models else "Pending"),
            "runs": runs, "models": models,
            "latestModel": f"v{models[-1]['version']}" if models else None,
            "lastRun": runs[-1]["pathspec"] if runs else None,
            "sourceCommit": COMMITS[max(r["gen"] for r in self.runs if r["start"] <= t)]
            if current or runs else None}
        if current:
            status["currentRun"] = {"pathspec": f"PumpkinFlow/{current['id']}",
                                    "generation": current["gen"], "trigger": current["trigger"],
                                    "attempt": current["attempt"], "launched": True,
                                    "commit": current["commit"],
                                    "startedAt": iso(current["start"])}
            status["progress"] = {"step": "train", "epochs": current["n"], "epoch": min(
                current["n"], int((t - current["start"]) / (current["end"] - current["start"])
                                  * current["n"]))}
        if t >= RETRAIN_AT:
            status["retrain"] = {"episode": self.episode, "requestedAt": iso(RETRAIN_AT),
                                 "deployment": "classifier", "reason": "DriftDetected",
                                 "window": 200}
        return status

    def deployment(self, t: float) -> dict[str, Any]:
        stable_v = 1 if t >= 75 else None
        stable_since = 75.0
        canary, finished, rejected = None, [], []
        for ro in self.rollouts:
            live, done = _rollout_state(ro, t)
            canary = live or canary
            if done:
                finished.append(done)
                if done["outcome"] == "promoted":
                    stable_v, stable_since = done["version"], ro["verdicts"][-1][1]
                else:
                    rejected.append({"version": done["version"], "generation": 1,
                                     "reason": "CanaryRolledBack", "at": done["finishedAt"],
                                     "message": f"step 1/3 at 10%: {done['reason']}"})
        status: dict[str, Any] = {
            "observedGeneration": 1,
            "phase": "Progressing" if canary else ("Serving" if stable_v else "Deploying"),
            "stableVersion": f"v{stable_v}" if stable_v else None,
            "canaryVersion": f"v{canary['version']}" if canary else None,
            "rollouts": finished, "rejectedVersions": rejected}
        if stable_v:
            status["stable"] = {"version": stable_v, "since": iso(stable_since),
                                "modelUri": f"file:///state/models/{stable_v}"}
        if canary:
            status["canary"] = canary
        if t >= FIRST_CHECK:
            check = FIRST_CHECK + CHECK_EVERY * int((t - FIRST_CHECK) / CHECK_EVERY)
            reference = max([1, *(v for v, at in self.promotions.items() if at < check)])
            status["drift"] = _drift(check, reference, self.retrained_at, self.episode)
        return status

    def events(self, end: float) -> list[dict[str, Any]]:
        out = []

        def add(t: float, kind: str, reason: str, message: str, typ: str = "Normal") -> None:
            if t <= end:
                out.append({"t": T0 + t, "kind": kind, "name": "classifier", "reason": reason,
                            "type": typ, "message": message})

        for r in self.runs:
            add(r["start"], "Experiment", "RunStarted", f"run PumpkinFlow/{r['id']} started")
            rec = _run_record(r)
            add(r["end"], "Experiment", rec["reason"], rec["message"],
                "Normal" if r["out"] == "model" else "Warning")
        add(75, "ModelDeployment", "Deploying", "deploying model v1")
        for ro in self.rollouts:
            add(ro["start"], "ModelDeployment", "CanaryStarted",
                f"canary v{ro['version']} started at 10%")
            _, done = _rollout_state(ro, END)
            if done:
                add(ro["verdicts"][-1][1], "ModelDeployment",
                    "CanaryPromoted" if done["outcome"] == "promoted" else "CanaryRolledBack",
                    f"v{ro['version']} {done['outcome']}: {done['reason']}",
                    "Normal" if done["outcome"] == "promoted" else "Warning")
        add(DETECTED, "ModelDeployment", "DriftDetected",
            f"drift saturation p=3.1e-05; episode {self.episode} started", "Warning")
        add(RETRAIN_AT, "ModelDeployment", "RetrainRequested",
            f"retraining for episode {self.episode}")
        cleared = FIRST_CHECK + CHECK_EVERY * (1 + (self.retrained_at - FIRST_CHECK) // CHECK_EVERY)
        add(cleared, "ModelDeployment", "DriftCleared",
            f"episode {self.episode} ended")
        return sorted(out, key=lambda e: e["t"])


def _kubectl(exp: Row, dep: Row, repo: Row, age: str) -> str:
    es, ds = exp["status"], dep["status"]
    drift = (ds.get("drift") or {}).get("summary", "")
    acc = (es["runs"] or [{}])[-1].get("metrics", {}).get("accuracy")
    rows = [
        ("NAME", "PHASE", "RUN", "METRIC", "MODEL", "AGE"),
        ("experiment.mlops.trellis.dev/classifier", es["phase"], es.get("lastRun") or "",
         f"accuracy={acc:.4f}" if acc else "", es.get("latestModel") or "", age),
        (), ("NAME", "STABLE", "CANARY", "WEIGHT", "DRIFT", "PHASE", "AGE"),
        ("modeldeployment.mlops.trellis.dev/classifier", ds.get("stableVersion") or "",
         ds.get("canaryVersion") or "", str((ds.get("canary") or {}).get("weight", "")),
         drift, ds["phase"], age),
        (), ("NAME", "COMMIT", "READY", "AGE"),
        ("specrepository.mlops.trellis.dev/farm", repo["status"]["lastSyncedCommit"][:12],
         "True", age)]
    blocks: list[list[tuple[str, ...]]] = [[]]
    for row in rows:
        if row:
            blocks[-1].append(row)
        else:
            blocks.append([])
    lines = []
    for block in blocks:
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        lines += ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in block]
        lines.append("")
    return "\n".join(lines)


def _pruned(value: Any) -> Any:
    """A deep copy without null fields: a merge patch deletes them, so ``kubectl get``
    never shows them."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def demo_data(*, rollback: bool = True, stop_at: float | None = None) -> dict[str, Any]:
    """The report's input for the farm's story, recorded every 2 s until ``stop_at``."""
    story = _Story(rollback)
    end = min(END, stop_at if stop_at is not None else END)
    samples = [{"t": T0 + float(t), "deployment": story.deployment(t),
                "experiment": story.experiment(t)} for t in np.arange(2.0, end + 0.01, 2.0)]
    gen = max([r["gen"] for r in story.runs if r["start"] <= end] or [1])
    meta = {"name": "classifier", "namespace": NS, "generation": gen,
            "creationTimestamp": iso(0),
            "annotations": {"mlops.trellis.dev/commit": COMMITS[gen]}}
    exp = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
           "metadata": meta, "status": story.experiment(end), "spec": {
               "flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
               "parameters": {"seed": 7, "epochs": 6, "lr": 0.003},
               "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9},
               "backend": "local", "retry": {"limit": 1}}}
    dep = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {**meta, "generation": 1}, "status": story.deployment(end), "spec": {
               "model": {"experiment": "classifier", "version": "latest"},
               "canary": {"steps": list(STEPS), "interval": "30s", "analysis": {
                   "minRequests": 20, "maxErrorRate": 0.05, "maxLatencyP99Ms": 500,
                   "maxPredictionShift": 0.3}},
               "drift": {"enabled": True, "test": "ks", "window": 200, "pValue": 0.05,
                         "minAccuracy": 0.8, "action": "retrain"}, "backend": "local"}}
    repo = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "SpecRepository",
            "metadata": {"name": "farm", "namespace": NS},
            "spec": {"url": "/tmp/trellis-demo/farm.git", "ref": "main", "path": "specs"},
            "status": {"lastSyncedCommit": COMMITS[gen], "lastAttemptedCommit": COMMITS[gen],
                       "objects": 2}}
    phases = [{"name": p["name"], "seconds": round(min(p["end"], end) - p["start"], 1),
               "ok": p["end"] <= end} for p in story.phases if p["start"] < end]
    return _pruned({
        "title": "Trellis demo — the pumpkin farm", "started_at": T0, "finished_at": T0 + end,
        "phases": phases, "experiment": exp, "deployment": dep, "specrepo": repo,
        "samples": samples, "events": story.events(end),
        "kubectl_get_mlops": _kubectl(exp, dep, repo, f"{int(end // 60)}m")})
