"""Pod problems are reported in Kubernetes' own words, and only the ones that need a human."""

from __future__ import annotations

from controller.training import podstate


def _pod(name: str = "p", created: str = "2026-01-01T00:00:00Z", **status) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def _waiting(reason: str, message: str = "", **extra) -> dict:
    return {"name": "flow", "state": {"waiting": {"reason": reason, "message": message}},
            **extra}


def test_progressing_pods_are_not_blocked() -> None:
    assert podstate.blocked([]) is None
    assert podstate.blocked([_pod(phase="Pending", containerStatuses=[
        _waiting("ContainerCreating")])]) is None
    assert podstate.blocked([_pod(phase="Running", containerStatuses=[
        {"name": "flow", "state": {"running": {}}}])]) is None


def test_unschedulable_carries_the_schedulers_message() -> None:
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    found = podstate.blocked([_pod(phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": msg}])])
    assert found == podstate.Blocked("Unschedulable", f"pod p: {msg}")


def test_image_pull_and_config_errors_name_the_container() -> None:
    found = podstate.blocked([_pod(containerStatuses=[
        _waiting("ImagePullBackOff", 'Back-off pulling image "x"')])])
    assert found is not None and found.reason == "ImagePullBackOff"
    assert "container flow" in found.message and 'pulling image "x"' in found.message
    init = podstate.blocked([_pod(initContainerStatuses=[
        _waiting("CreateContainerConfigError", 'secret "trellis-s3" not found')])])
    assert init is not None and init.reason == "CreateContainerConfigError"


def test_crash_loop_reports_the_last_exit() -> None:
    found = podstate.blocked([_pod(containerStatuses=[_waiting(
        "CrashLoopBackOff", "back-off 10s", restartCount=3,
        lastState={"terminated": {"exitCode": 2, "reason": "Error"}})])])
    assert found is not None and found.reason == "CrashLoopBackOff"
    assert "exit code 2 (Error), restarted 3 time(s)" in found.message


def test_oldest_pod_speaks_first() -> None:
    late = _pod("late", "2026-01-02T00:00:00Z", containerStatuses=[_waiting("ErrImagePull")])
    early = _pod("early", "2026-01-01T00:00:00Z", containerStatuses=[
        _waiting("CrashLoopBackOff")])
    assert podstate.blocked([late, early]).reason == "CrashLoopBackOff"


def test_failure_detail_lists_nonzero_exits() -> None:
    pods = [_pod(containerStatuses=[
        {"name": "flow", "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                  "message": "boom"}}},
        {"name": "side", "state": {"terminated": {"exitCode": 0}}}])]
    assert podstate.failure_detail(pods) == "pod p, container flow: exit code 1 (Error): boom"


def _event(uid: str, at: str, message: str, reason: str = "FailedCreate") -> dict:
    return {"reason": reason, "message": message, "lastTimestamp": at,
            "involvedObject": {"kind": "Job", "name": "j", "uid": uid}}


def test_creation_refused_says_the_job_controllers_latest_word() -> None:
    job = {"metadata": {"name": "j", "uid": "u1"}}
    events = [_event("u1", "2026-01-01T00:00:01Z", "exceeded quota: pods=0"),
              _event("u1", "2026-01-01T00:00:05Z", "violates PodSecurity"),
              _event("u0", "2026-01-01T00:00:09Z", "an older Job of the same name"),
              _event("u1", "2026-01-01T00:00:09Z", "Created pod: j-x", "SuccessfulCreate")]
    found = podstate.creation_refused(job, events)
    assert found == podstate.Blocked("FailedCreate", "Job j: violates PodSecurity")
    assert podstate.creation_refused(job, events[2:]) is None


def test_out_of_memory_names_the_container_the_runtime_killed() -> None:
    def ended(reason: str) -> dict:
        return _pod(containerStatuses=[{"name": "flow", "state": {"terminated": {
            "exitCode": 1, "reason": reason}}}])
    assert podstate.out_of_memory([ended("Error")]) is None
    assert podstate.out_of_memory([ended("OOMKilled")]) == "pod p, container flow"
