"""Fault harness benchmark (suite ``chaos``): N trials, each breaking the world at a
random moment (seeded) of a chosen phase, then letting it settle and checking the
invariants (``tests/support/chaos.py``).

Faults: a real SIGKILL of the operator process (restarted at once) during a local
training launch, a run's last step, the model registration, a SpecRepository apply, a
canary rollout (any step, the promotion, a rollback) and a drift episode (detection to
retrain launch, the retrain run); a SIGKILL + restart of the kube-apiserver process;
etcd stopped for 10 s. Each phase first runs once undisturbed (a control run, checked
too): the time it took is the window the faults are drawn from. One dev
cluster (``DevCluster`` in a temporary directory) serves every trial; each trial has a
namespace, state dir and operator of its own, and everything it started is stopped
before the next.

Rows per phase: trials, invariant violations, trials that never settled, and the
median time to settle (from the kill, or from the server's return for API-server and
etcd faults, until the objects reach their final state: for training phases that
includes the rest of the run). ``--detail FILE`` keeps every trial's record.

Prints a JSON list of rows ``{"name","value","unit","baseline","baseline_value",
"ratio","notes"}``; ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rows import emit, row  # noqa: E402
from controller.devcluster.cluster import DevCluster  # noqa: E402
from tests.support import chaos  # noqa: E402

# >= 50 trials in all; the training phases cost a (tiny) Metaflow run each.
DEFAULT_PLAN = ("training-launch=6,run-end=5,model-registration=5,specrepo-apply=8,"
                "flow-revision-launch=3,apiserver-restart=3,etcd-outage=3,"
                "apiserver-restart-specrepo=3,etcd-outage-specrepo=3,canary-step=5,"
                "canary-promotion=4,canary-rollback=4,drift-episode=3,retrain=3")
QUICK_PLAN = ("training-launch=2,model-registration=2,specrepo-apply=3,"
              "apiserver-restart-specrepo=1,etcd-outage-specrepo=1,canary-step=2,"
              "drift-episode=1")


def parse_plan(text: str) -> list[tuple[str, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        if name not in chaos.PHASES:
            raise SystemExit(f"unknown phase {name!r}; known: {', '.join(chaos.PHASES)}")
        out.append((name, int(n or 1)))
    return out


def rows_for(trials: list[chaos.Trial], seed: int, windows: dict[str, float],
             controls: list[chaos.Trial]) -> list[dict]:
    out = []
    for name, s in chaos.summary(trials).items():
        phase = chaos.PHASES[name]
        window = windows.get(name, phase.window_s)
        how = "measured by its control run" if name in windows else "fixed"
        note = (f"{phase.fault} at a uniform moment in [0, {window:.2f}) s ({how}) of the "
                f"{phase.scenario} scenario's phase (seed {seed}); {s['in_window']} of "
                f"{s['trials']} landed before the phase finished; {s['errors']} never settled")
        out.append(row(f"chaos.{name}.trials", s["trials"], "trials", notes=note))
        out.append(row(f"chaos.{name}.in_window", s["in_window"], "trials",
                       notes="faults that hit while the phase was still in motion"))
        out.append(row(f"chaos.{name}.violations", s["violations"], "violations",
                       "required", 0, notes="invariant violations after settling"))
        if s["median_settle_s"] is not None:
            out.append(row(f"chaos.{name}.median_settle_s", s["median_settle_s"], "s",
                           notes="from the fault (the server's return for API server/etcd) "
                           "to the final state; training phases include the rest of the run"))
    total_v = sum(len(t.violations) for t in trials)
    out.append(row("chaos.trials_total", len(trials), "trials",
                   notes=f"{len(chaos.summary(trials))} phases, seed {seed}"))
    out.append(row("chaos.violations_total", total_v, "violations", "required", 0,
                   notes="one run per generation x flow revision x episode; model versions "
                   "gapless, never duplicated; retrain once per episode; live objects equal "
                   "exactly one (the head) commit"))
    bad_controls = [c for c in controls if not c.ok()]
    out.append(row("chaos.control_runs", len(controls), "runs",
                   notes=f"undisturbed runs of each phase (windows); {len(bad_controls)} "
                   "broke an invariant or never settled: "
                   + "; ".join(f"{c.phase}: {c.error or c.violations}" for c in bad_controls)))
    out.append(row("chaos.in_window_total", sum(t.in_window for t in trials), "trials",
                   notes=f"of {len(trials)}: faults that hit a phase still in motion"))
    out.append(row("chaos.unsettled_total", sum(t.error is not None for t in trials), "trials",
                   "required", 0, notes="trials whose world did not settle in time"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", help=f"phase=trials,... (default {DEFAULT_PLAN})")
    parser.add_argument("--quick", action="store_true", help=f"the plan {QUICK_PLAN}")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--no-calibrate", action="store_true",
                        help="use the phases' fixed windows instead of a control run each")
    parser.add_argument("--work", type=Path, help="keep the trials' logs and state here")
    parser.add_argument("--detail", type=Path, help="write every trial's record here")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    plan = parse_plan(args.plan or (QUICK_PLAN if args.quick else DEFAULT_PLAN))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="trellis-chaos-") as tmp:
        work = args.work or Path(tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        # the operators note their state dirs here, not in the user's registry
        os.environ["TRELLIS_REGISTRY_DIR"] = str(Path(tmp) / "registry")
        os.environ.setdefault("METAFLOW_USER", "trellis-bench")
        dev = DevCluster(Path(tmp) / "cluster")
        started = time.monotonic()
        dev.up()
        try:
            harness = chaos.Harness(dev, work, calibrate=not args.no_calibrate, log=log)

            def keep(trials: list[chaos.Trial]) -> None:  # a run cut short keeps its trials
                if args.detail:
                    args.detail.write_text(json.dumps(
                        {"seed": args.seed, "plan": plan, "windows": harness.windows,
                         "controls": chaos.as_json(harness.calibrations),
                         "trials": chaos.as_json(trials)},
                        indent=2) + "\n")

            harness.on_trial = keep
            trials = harness.run(plan, args.seed)
        finally:
            dev.down()
        log(f"[chaos] {len(trials)} trials in {time.monotonic() - started:.0f}s")
    emit(rows_for(trials, args.seed, harness.windows, harness.calibrations), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
