"""Fault harness: break the world at a random moment of a chosen phase, let it settle,
check that nothing was done twice, skipped or left half-way.

The operator's promise (``docs/architecture.md``) is that everything it needs to resume
lives on the resources' status and on Metaflow run tags, so a SIGKILL at *any* moment
neither duplicates a run nor loses a model version, and that an API server restart or
an etcd outage only delays it. This package turns that promise into trials:

* a **phase** is a scenario (an Experiment training in local mode, a SpecRepository
  applying a commit, a canary rollout, a drift episode and its retrain) plus the moment
  to aim at (``scenarios.py``, ``serving.py``);
* a **fault** is a real SIGKILL of the operator process (restarted at once), a real
  restart of the kube-apiserver process, or etcd stopped for 10 s and started again
  (``faults.py``);
* the moment is drawn from a seeded RNG inside the phase's window, which the harness
  measures first with an undisturbed run of the phase, so faults land while the phase
  is in motion on any machine; a failing trial is repeatable from its seed;
* the **invariants** are pure functions over what the world recorded (``invariants.py``).

Used by ``tests/e2e/test_chaos.py`` (a small fixed-seed slice) and
``bench/chaos_bench.py`` (``make bench`` suite ``chaos``).
"""

from tests.support.chaos.harness import PHASES, Harness, Phase, Trial, as_json, summary
from tests.support.chaos.invariants import LaunchRecord, Violation

__all__ = ["PHASES", "Harness", "LaunchRecord", "Phase", "Trial", "Violation", "as_json",
           "summary"]
