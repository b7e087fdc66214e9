"""Why a Job's pods are not getting anywhere, in Kubernetes' own words.

A Job only says "active" while its pod waits for an image that does not exist, for a
GPU no node has, or restarts a crashing container; users look at the Experiment, so
the reason Kubernetes gives (``ImagePullBackOff``, ``Unschedulable: 0/1 nodes are
available: 1 Insufficient nvidia.com/gpu``) is carried onto its Ready condition.
Pure: pods in, one verdict out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.training.podrun import MARKER

# Waiting reasons that will not resolve by waiting a little longer.
STUCK_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
    "RunContainerError", "PreCreateHookError",
})


@dataclass(frozen=True)
class Blocked:
    reason: str
    message: str


def blocked(pods: list[dict[str, Any]]) -> Blocked | None:
    """The first pod problem that needs a human, or None while pods make progress."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        found = _pod_blocked(pod)
        if found is not None:
            return found
    return None


def _pod_blocked(pod: dict[str, Any]) -> Blocked | None:
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            return Blocked("Unschedulable",
                           f"pod {name}: {cond.get('message') or 'no node fits it'}")
    containers = [*(status.get("initContainerStatuses") or []),
                  *(status.get("containerStatuses") or [])]
    for cs in containers:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in STUCK_WAITING:
            detail = waiting.get("message") or ""
            last = ((cs.get("lastState") or {}).get("terminated") or {})
            if reason == "CrashLoopBackOff" and last:
                detail = (f"exit code {last.get('exitCode')}"
                          + (f" ({last['reason']})" if last.get("reason") else "")
                          + f", restarted {cs.get('restartCount', 0)} time(s)")
            return Blocked(reason, f"pod {name}, container {cs.get('name')}: "
                                   f"{detail or reason}".rstrip())
    return None


def creation_refused(job: dict[str, Any], events: list[dict[str, Any]]) -> Blocked | None:
    """The Job controller's last word on why it could not create the Job's pod (Pod
    Security admission, a quota, a missing ServiceAccount), from its ``FailedCreate``
    Events: the Job itself stays "active" with no pod and says nothing."""
    uid = job["metadata"].get("uid")
    refused = [e for e in events if e.get("reason") == "FailedCreate"
               and (e.get("involvedObject") or {}).get("uid") in (None, uid)]
    if not refused:
        return None
    last = max(refused, key=lambda e: e.get("lastTimestamp") or e.get("eventTime")
               or (e.get("metadata") or {}).get("creationTimestamp") or "")
    count = int(last.get("count") or 1)
    said = (last.get("message") or "the Job controller could not create its pod").strip()
    return Blocked("FailedCreate", f"Job {job['metadata']['name']}: {said}"
                   + (f" ({count} attempts)" if count > 1 else ""))


def failure_detail(pods: list[dict[str, Any]]) -> str:
    """What the failed pods' containers said when they ended (exit code, reason, message)."""
    parts = []
    for pod in pods:
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []),
                   *(status.get("containerStatuses") or [])]:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                text = (term.get("message") or "").strip()
                parts.append(f"pod {pod['metadata']['name']}, container {cs.get('name')}: "
                             f"exit code {term.get('exitCode')} ({term.get('reason', '')})"
                             + (f": {text[-500:]}" if text else ""))
    return "; ".join(parts)


def out_of_memory(pods: list[dict[str, Any]]) -> str | None:
    """Which container the runtime reports OOM-killed. Where only the biggest process
    is killed (cgroup v1, the kubelet's singleProcessOOMKill), podrun outlives the flow
    and reports a plain exit code: this names the cause."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return f"pod {pod['metadata']['name']}, container {cs.get('name')}"
    return None


def run_result(pods: list[dict[str, Any]], container: str) -> dict[str, Any] | None:
    """The run's outcome as ``controller.training.podrun`` wrote it into the termination
    message of ``container`` (the newest pod's), or None when no pod left one."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "",
                      reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") != container or not term.get("message"):
                continue
            try:
                doc = json.loads(term["message"])
            except ValueError:
                continue  # FallbackToLogsOnError: the log's tail, not our JSON
            if isinstance(doc, dict) and doc.get(MARKER) == 1:
                return doc
    return None
