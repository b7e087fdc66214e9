"""Checks before a run is launched: the resources are within the CRD's bounds (the API
server enforced them on admission; an object stored under an older CRD is judged by
today's), the flow file exists, defines the named FlowSpec, and declares every parameter
with a compatible type.

A problem here is a spec problem (Stalled until the spec or the code changes), so it is
reported as a condition and never retried on a timer.

``cluster_source`` is the check of a ``kubernetes`` run alone: its pod clones the code
with the SpecRepository's Secret, which must be in the Experiment's namespace.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import api, schema
from controller.training import clone, flowinspect

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object names


@dataclass(frozen=True)
class Preflight:
    problem: str = ""
    reason: str = ""
    commit: str | None = None


def preflight(exp: dict[str, Any], root: Path, extra: dict[str, Any]) -> Preflight:
    spec = exp["spec"]
    bad = schema.section_problems(api.EXPERIMENT.kind, "resources", spec.get("resources") or {})
    if bad:
        return Preflight("; ".join(str(p) for p in bad), api.Reason.INVALID_RESOURCES)
    flow = spec["flow"]
    path = root / flow["file"]
    if not path.is_file():
        return Preflight(f"flow file {flow['file']} not found (looked in {root})",
                         api.Reason.FLOW_NOT_FOUND)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return Preflight(f"flow file {flow['file']} unreadable: {exc}", api.Reason.FLOW_NOT_FOUND)
    try:
        found = flowinspect.find_flow(text, flow["name"])
    except flowinspect.FlowInspectError as exc:
        return Preflight(f"{flow['file']}: {exc}", api.Reason.FLOW_NOT_FOUND)
    if found is None:
        return Preflight(f"{flow['file']} defines no FlowSpec named {flow['name']!r}",
                         api.Reason.FLOW_NOT_FOUND)
    given = {**(spec.get("parameters") or {}), **extra}
    problems = flowinspect.check_parameters(found.parameters, given)
    if problems:
        return Preflight("; ".join(problems), api.Reason.INVALID_PARAMETERS)
    return Preflight(commit=_commit(exp, root))


def cluster_source(exp: dict[str, Any]) -> Preflight | None:
    """A refusal when the training pod could not mount the git credentials its clone
    needs (a Secret in another namespace), instead of a Job whose pod never starts."""
    problem = clone.secret_problem(exp)
    return Preflight(problem, api.Reason.SOURCE_SECRET_ELSEWHERE) if problem else None


def _commit(exp: dict[str, Any], root: Path) -> str | None:
    """The git commit the spec (and so the flow code) came from."""
    ann = exp["metadata"].get("annotations") or {}
    if ann.get(api.ANN_SOURCE_COMMIT):
        return ann[api.ANN_SOURCE_COMMIT]
    return head_commit(root)


def head_commit(root: Path) -> str | None:
    """HEAD's commit of the checkout at ``root``, read from the files git keeps it in
    (``HEAD``, and the loose ref it names: gitrepository-layout(5)). git is asked only
    where those do not answer (a packed or reftable ref, a worktree, a subdirectory): a
    thousand launches were a thousand forks of the operator, each a ``git rev-parse``."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if _SHA.fullmatch(head):
            return head  # detached, as a SpecRepository's checkouts are
        if head.startswith("ref: refs/"):
            ref = (git / head.removeprefix("ref: ")).read_text().strip()
            if _SHA.fullmatch(ref):
                return ref
    except OSError:
        pass
    return _rev_parse(root)


def _rev_parse(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
