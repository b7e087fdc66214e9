"""Cluster-mode training: a ``batch/v1`` Job, owned by the Experiment, whose one pod runs
the whole flow (``controller.training.podrun``) with the Experiment's CPU, memory and GPU.

Every step runs in that pod: one set of credentials, one security context, one owner,
one place Kubernetes says why it cannot start; deleting the Experiment deletes the Job
and so every process of the run. Artifacts and models go to the S3 datastore; the run's
outcome comes back as the pod's termination message (docs/architecture.md says why
this and not ``run --with kubernetes``).

``render_job`` is pure; ``KubernetesTrainingBackend`` creates the Job, reads its state
and its Pods' from the operator's watches (``controller.children``: no request per
look), and the outcome from the finished pod.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller import api, conditions, quantities, schema
from controller.children import LABEL_JOB_NAME, Children
from controller.kube import EVENTS, JOBS, PODS, Kube, owner_reference
from controller.settings import Settings
from controller.training import clone, podstate
from controller.training.decide import RunKey

SOURCE_DIR = clone.SOURCE_DIR
WORK_DIR = "/work"  # the pod's writable scratch (an emptyDir): HOME, TMPDIR, Metaflow's
CONTAINER = "flow"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_UID = 10001  # the Dockerfile's trellis user
# The restricted Pod Security profile, which trainer pods meet (unless the dev node's
# host mounts are configured: hostPath is outside the profile).
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
                "fsGroup": TRAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
# A started Job with no pod after this long is asked about (its Events), then again after
# twice as long, up to the cap: one request per troubled Job, never one per healthy Job.
REFUSAL_CHECK_S = 10.0
REFUSAL_CHECK_MAX_S = 600.0

log = logging.getLogger("trellis.training")


def job_name(experiment: str, key: RunKey, attempt: int) -> str:
    suffix = f"-g{key.generation}-a{attempt}"
    if key.trigger:
        suffix += "-r" + hashlib.sha256(key.trigger.encode()).hexdigest()[:6]
    if key.revision:  # a code-only change is a new run of the same generation
        suffix += "-f" + key.revision[:8]
    return experiment[: 63 - len(suffix)].rstrip("-") + suffix


def run_resources(resources: dict[str, Any] | None) -> dict[str, Any]:
    """``spec.resources`` with the CRD's defaults (cpu, memory, gpu) filled in."""
    return schema.spec_section(api.EXPERIMENT.kind, "resources", resources)


def container_resources(resources: dict[str, Any] | None) -> dict[str, Any]:
    """The flow container's resources: exactly the quantities the spec asked for
    (no rounding to Metaflow's units). Memory is also the limit (a run that outgrows it
    is OOM-killed and says so); cpu is not limited (throttling only slows a run); a GPU
    is an extended resource, asked for as a limit."""
    res = run_resources(resources)
    memory = quantities.kubernetes_memory(res["memory"])
    out: dict[str, Any] = {
        "requests": {"cpu": quantities.kubernetes_cpu(res["cpu"]), "memory": memory},
        "limits": {"memory": memory},
    }
    if int(res["gpu"]):
        out["limits"][GPU_RESOURCE] = str(int(res["gpu"]))
    return out


def _env(settings: Settings, commit: str | None, gpu: bool, cpu: int | str
         ) -> list[dict[str, Any]]:
    """Where the run keeps its files (the pod's scratch, never the read-only image) and
    what it talks to: the S3 datastore and model store, the metadata service if any."""
    env = {
        "HOME": WORK_DIR, "TMPDIR": f"{WORK_DIR}/tmp", "TRELLIS_WORKDIR": f"{WORK_DIR}/run",
        "METAFLOW_USER": "trellis",
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": settings.datastore_s3_root,
        # Metaflow's datastore stages files in ARTIFACT_LOCALROOT, metaflow.S3 in TEMPDIR
        # (both the cwd by default), the client caches blobs in CLIENT_CACHE_PATH
        # (/tmp/metaflow_client by default): all on the pod's scratch.
        "METAFLOW_ARTIFACT_LOCALROOT": f"{WORK_DIR}/tmp",
        "METAFLOW_TEMPDIR": f"{WORK_DIR}/tmp",
        "METAFLOW_CLIENT_CACHE_PATH": f"{WORK_DIR}/client-cache",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": WORK_DIR,
        "METAFLOW_DEFAULT_METADATA": "service" if settings.metaflow_service_url else "local",
        "TRELLIS_MODEL_STORE": settings.datastore_s3_root.rstrip("/") + "/models",
        # Asked for a GPU, the run uses it or fails: never trains on the CPU holding one.
        "TRELLIS_DEVICE": "cuda" if gpu else "cpu",
        # cpu is a request, not a limit: torch would size its pools by the node's cores
        # and, sharing them, run many times slower than on the cores it was given.
        "OMP_NUM_THREADS": str(quantities.threads(cpu)),
        "MKL_NUM_THREADS": str(quantities.threads(cpu)),
    }
    if commit:  # else the flow asks git for the clone's HEAD itself
        env["TRELLIS_SOURCE_COMMIT"] = commit
    if settings.metaflow_service_url:
        env["METAFLOW_SERVICE_URL"] = settings.metaflow_service_url
    if settings.s3_endpoint_url:
        env["METAFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return [{"name": k, "value": v} for k, v in env.items()]


def _scheduling(settings: Settings, gpu: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    selector = {**settings.trainer_node_selector,
                **(settings.trainer_gpu_node_selector if gpu else {})}
    tolerations = [*settings.trainer_tolerations,
                   *(settings.trainer_gpu_tolerations if gpu else [])]
    if selector:
        out["nodeSelector"] = selector
    if tolerations:
        out["tolerations"] = tolerations
    if settings.trainer_image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in settings.trainer_image_pull_secrets]
    if settings.trainer_priority_class:
        out["priorityClassName"] = settings.trainer_priority_class
    return out


def render_job(exp: dict[str, Any], key: RunKey, attempt: int, settings: Settings, *,
               parameters: dict[str, Any], tags: dict[str, str], commit: str | None,
               source_url: str | None, source_secret: str | None = None) -> dict[str, Any]:
    """The Job for one attempt of a run. With ``source_url``, an init container fetches
    ``commit`` of it (``controller.training.clone``) with the credentials of Secret
    ``source_secret`` (the SpecRepository's, in the Experiment's namespace), which only
    that container mounts; without, the flow comes from the image (``/app``)."""
    meta, spec = exp["metadata"], exp["spec"]
    name = job_name(meta["name"], key, attempt)
    resources = container_resources(spec.get("resources"))
    gpu = GPU_RESOURCE in resources["limits"]
    labels = {
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_EXPERIMENT: meta["name"],
        api.LABEL_GENERATION: str(key.generation),
        f"{api.PREFIX}/attempt": str(attempt),
    }
    flow_dir = SOURCE_DIR if source_url else "/app"
    request = {"flow_file": f"{flow_dir}/{spec['flow']['file']}",
               "flow_name": spec["flow"]["name"], "parameters": parameters, "tags": tags}
    # /tmp as well: libraries that assume it is writable meet a read-only root otherwise.
    mounts = [{"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}},
                                     {"name": "tmp", "emptyDir": {}}]
    for index, (inside, host) in enumerate(sorted(settings.trainer_host_mounts.items())):
        volumes.append({"name": f"host-{index}",
                        "hostPath": {"path": host, "type": "Directory"}})
        mounts.append({"name": f"host-{index}", "mountPath": inside, "readOnly": True})
    container = {
        "name": CONTAINER,
        "image": settings.trainer_image,
        "command": ["python", "-m", "controller.training.podrun"],
        "workingDir": WORK_DIR,
        "env": [{"name": "TRELLIS_RUN_REQUEST", "value": json.dumps(request, sort_keys=True)},
                *_env(settings, commit, gpu, run_resources(spec.get("resources"))["cpu"])],
        "envFrom": [{"secretRef": {"name": settings.s3_secret}}],
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
        # A container that dies before podrun writes its message still says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": settings.trainer_service_account,
        # The run talks to S3, not to the API server.
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
        **_scheduling(settings, gpu),
    }
    if source_url:
        # Train exactly the merged code: the commit the spec came from.
        mounts.append({"name": "source", "mountPath": clone.SOURCE_MOUNT})
        volumes.extend(clone.volumes(source_secret))
        pod_spec["initContainers"] = [clone.init_container(
            settings.trainer_image, source_url, commit, WORK_DIR, source_secret,
            CONTAINER_SECURITY)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": meta["namespace"], "labels": labels,
            "annotations": {f"{api.PREFIX}/run-key": f"{key.generation}/{key.trigger}"},
            "ownerReferences": [owner_reference(exp)],
        },
        "spec": {
            "backoffLimit": 0,  # Trellis' spec.retry decides about new attempts ...
            # ... but a pod preempted, evicted or drained is replaced by the Job
            # controller without counting as a failure (Kubernetes' documented pairing
            # of backoffLimit 0 with this rule).
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [
                {"type": "DisruptionTarget", "status": "True"}]}]},
            "activeDeadlineSeconds": settings.trainer_deadline_seconds,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class JobObservation:
    """One look at a run's Job: its state, what to say, why it is stuck, its outcome."""

    state: str  # running | succeeded | failed | lost
    message: str
    blocked: podstate.Blocked | None = None
    result: dict[str, Any] | None = None


def job_state(job: dict[str, Any] | None) -> tuple[str, str]:
    """(state, message) of a Job: running, succeeded, failed or lost."""
    if job is None:
        return "lost", "the training Job no longer exists"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", "Job complete"
        if cond.get("type") == "Failed":
            return "failed", cond.get("message") or cond.get("reason") or "Job failed"
    return "running", "Job created; waiting for its pods"


class KubernetesTrainingBackend:
    def __init__(self, kube: Kube, settings: Settings, children: Children | None = None
                 ) -> None:
        self.kube = kube
        self.settings = settings
        self.children = children or Children(kube)  # no watches: read by GET
        # (namespace, Job name, uid) -> (next look at its Events, interval, what the last
        # look found); dropped once the Job has pods, ends, disappears or is deleted.
        self._refusals: dict[tuple[str, str, str], tuple[float, float,
                                                         podstate.Blocked | None]] = {}

    async def launch(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The Job, and whether it already existed (created before a restart or by a
        replica that lost its lease before recording it): adopted, never duplicated."""
        ns = job["metadata"]["namespace"]
        # Asked of the API server, not the cache: adopting a deleted Job a relist left
        # in the index would follow a run that does not exist.
        existing = await self.kube.get(JOBS, ns, job["metadata"]["name"])
        if existing is not None:
            return existing, True
        created = await self.kube.create(JOBS, ns, job)
        self.children.note(JOBS, created)
        return created, False

    async def observe(self, namespace: str, name: str) -> JobObservation:
        job = await self.children.get(JOBS, namespace, name)
        state, message = job_state(job.obj)
        if state == "running":
            pods = await self.children.pods_of_job(namespace, job)
            if pods:
                self._forget(namespace, name)
                return JobObservation(state, message, podstate.blocked(pods))
            return JobObservation(state, message, await self._refused(namespace, job.obj))
        self._forget(namespace, name)
        if state == "lost":
            return JobObservation(state, message)
        # Listed, not cached: the Pods' watch may not have delivered their final status
        # yet, and what is read here is written once, when the run ends.
        pods = await self.kube.list(PODS, namespace, f"{LABEL_JOB_NAME}={name}")
        result = podstate.run_result(pods, CONTAINER)
        if state == "succeeded":
            if result and not result.get("error") and result.get("pathspec") \
                    and result.get("model_uri"):
                return JobObservation(state, message, result=result)
            return JobObservation("failed", "the Job completed but its pod left no run "
                                  "result (pathspec and model)", result=result)
        if result and result.get("error"):
            said = f"{message}: {result['error']}"
            oom = podstate.out_of_memory(pods)
            if oom:
                said += f" ({oom} ran out of memory: OOMKilled; raise resources.memory)"
            if result.get("output"):
                said += f"; its output ended:\n{result['output']}"
            return JobObservation(state, said, result=result)
        detail = podstate.failure_detail(pods)
        return JobObservation(state, f"{message}: {detail}" if detail else message,
                              result=result)

    async def _refused(self, namespace: str, job: dict[str, Any]) -> podstate.Blocked | None:
        """Why a started Job has no pod, from its Events, looked at with a backoff."""
        started = conditions.parse_time((job.get("status") or {}).get("startTime"))
        if started is None or (dt.datetime.now(dt.UTC) - started).total_seconds() \
                < REFUSAL_CHECK_S:
            return None  # not started by the Job controller yet, or just now
        name, now = job["metadata"]["name"], time.monotonic()
        key = (namespace, name, job["metadata"].get("uid", ""))
        next_at, interval, found = self._refusals.get(key, (now, REFUSAL_CHECK_S / 2, None))
        if now < next_at:
            return found
        try:
            events = await self.kube.list(
                EVENTS, namespace,
                field_selector=f"involvedObject.kind=Job,involvedObject.name={name}")
        except ApiException as exc:
            if exc.status != 403:
                raise
            log.warning("cannot list Events in %s to explain Job %s without pods (%s): "
                        "manifests/rbac.yaml grants it", namespace, name, exc.reason)
            events = []
        found = podstate.creation_refused(job, events)
        interval = min(interval * 2, REFUSAL_CHECK_MAX_S)
        self._refusals[key] = (now + interval, interval, found)
        return found

    def _forget(self, namespace: str, name: str) -> None:
        for key in [k for k in self._refusals if k[:2] == (namespace, name)]:
            del self._refusals[key]

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete the run's Job and, in the background, its pod (SIGTERM, then the grace
        period): podrun passes the signal to every process of the flow."""
        self._forget(namespace, name)
        return await self.kube.delete(JOBS, namespace, name)
