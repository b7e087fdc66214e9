"""The harness's invariants: pure functions over what the world recorded (statuses,
Metaflow launches, live objects, commits pushed, processes running), each returning the
violations it found. Unit-tested on crafted violations in
``tests/unit/test_chaos_invariants.py``, so 0 reported violations means something."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller import api


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


def servers_accounted(live_ports: set[int], recorded_ports: set[int]) -> list[Violation]:
    """The model servers running are exactly those the serving state records: one
    started by a killed operator and never recorded would run (and hold memory) forever,
    one recorded but gone would be routed to."""
    out = [Violation("server-leaked", f"a model server on port {p} runs unrecorded")
           for p in sorted(live_ports - recorded_ports)]
    out += [Violation("server-missing", f"the recorded model server on port {p} is gone")
            for p in sorted(recorded_ports - live_ports)]
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


