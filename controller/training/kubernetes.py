"""Cluster-mode training: a ``batch/v1`` Job, owned by the Experiment, that runs the flow
with Metaflow's Kubernetes compute (each step its own pod, sized by ``spec.resources``).

The Job's own container only drives the run (small, fixed requests); the steps' pods get
``spec.resources`` through ``--with kubernetes:cpu=..,memory=..,gpu=..`` in Metaflow's
units, and the Job's annotations carry the exact quantities asked for.

``render_job`` is pure; ``KubernetesTrainingBackend`` creates the Job, reads its state
and its Pods' (from the operator's watches, ``controller.children``: no request per
look), and reads the finished run's artifacts through the Metaflow client (S3 datastore).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from controller import api, quantities, schema
from controller.children import LABEL_JOB_NAME, Children
from controller.kube import JOBS, PODS, Kube, owner_reference
from controller.settings import Settings
from controller.training import podstate
from controller.training.decide import RunKey

SOURCE_DIR = "/workspace/src"


def job_name(experiment: str, key: RunKey, attempt: int) -> str:
    suffix = f"-g{key.generation}-a{attempt}"
    if key.trigger:
        suffix += "-r" + hashlib.sha256(key.trigger.encode()).hexdigest()[:6]
    if key.revision:  # a code-only change is a new run of the same generation
        suffix += "-f" + key.revision[:8]
    return experiment[: 63 - len(suffix)].rstrip("-") + suffix


def flow_args(parameters: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in sorted(parameters.items()):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += [f"--{name}", text]
    return out


def step_resources(resources: dict[str, Any] | None) -> dict[str, Any]:
    """``spec.resources`` with the CRD's defaults (cpu, memory, gpu) filled in."""
    return schema.spec_section(api.EXPERIMENT.kind, "resources", resources)


def kubernetes_decorator(resources: dict[str, Any], settings: Settings) -> str:
    """``--with kubernetes:...`` for every step: cpu in cores, memory in whole MB (what
    Metaflow writes into the step pods), both rounded up (``controller.quantities``)."""
    res = quantities.metaflow_resources(step_resources(resources))
    parts = [f"image={settings.trainer_image}",
             f"service_account={settings.trainer_service_account}",
             f"cpu={res['cpu']}", f"memory={res['memory']}"]
    if int(res["gpu"]):
        parts.append(f"gpu={res['gpu']}")
    return "kubernetes:" + ",".join(parts)


def resource_annotations(resources: dict[str, Any]) -> dict[str, str]:
    """The step pods' resources as asked, exact Kubernetes quantities, on the Job (Metaflow
    is handed them rounded up to its units; these say what the spec asked for)."""
    res = step_resources(resources)
    return {f"{api.PREFIX}/resources-gpu": str(int(res["gpu"])),
            f"{api.PREFIX}/resources-cpu": quantities.kubernetes_cpu(res["cpu"]),
            f"{api.PREFIX}/resources-memory": quantities.kubernetes_memory(res["memory"])}


def render_job(exp: dict[str, Any], key: RunKey, attempt: int, settings: Settings, *,
               parameters: dict[str, Any], tags: dict[str, str], commit: str | None,
               source_url: str | None) -> dict[str, Any]:
    meta, spec = exp["metadata"], exp["spec"]
    name = job_name(meta["name"], key, attempt)
    resources = spec.get("resources") or {}
    labels = {
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_EXPERIMENT: meta["name"],
        api.LABEL_GENERATION: str(key.generation),
        f"{api.PREFIX}/attempt": str(attempt),
    }
    workdir = SOURCE_DIR if source_url else "/app"
    command = ["python", f"{workdir}/{spec['flow']['file']}", "--datastore=s3",
               "--no-pylint", "run", "--with", kubernetes_decorator(resources, settings)]
    for tag_key, tag_value in sorted(tags.items()):
        command += ["--tag", f"{tag_key}:{tag_value}"]
    command += flow_args(parameters)
    env = [
        {"name": "METAFLOW_USER", "value": "trellis"},
        {"name": "METAFLOW_DEFAULT_DATASTORE", "value": "s3"},
        {"name": "METAFLOW_DATASTORE_SYSROOT_S3", "value": settings.datastore_s3_root},
        {"name": "METAFLOW_KUBERNETES_NAMESPACE", "value": meta["namespace"]},
        {"name": "METAFLOW_KUBERNETES_SERVICE_ACCOUNT", "value": settings.trainer_service_account},
        {"name": "TRELLIS_SOURCE_COMMIT", "value": commit or "unknown"},
        {"name": "TRELLIS_MODEL_STORE",
         "value": settings.datastore_s3_root.rstrip("/") + "/models"},
    ]
    if settings.s3_endpoint_url:
        env.append({"name": "METAFLOW_S3_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    pod_spec: dict[str, Any] = {
        "serviceAccountName": settings.trainer_service_account,
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "containers": [{
            "name": "flow",
            "image": settings.trainer_image,
            "command": command,
            "workingDir": workdir,
            "env": env,
            "envFrom": [{"secretRef": {"name": settings.s3_secret}}],
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                          "limits": {"memory": "1Gi"}},
        }],
    }
    if source_url:
        # Train exactly the merged code: the commit the spec came from.
        pod_spec["initContainers"] = [{
            "name": "source",
            "image": settings.trainer_image,
            "command": ["sh", "-c", 'git clone --quiet "$REPO" "$DIR" && '
                        'git -C "$DIR" checkout --quiet "$COMMIT"'],
            "env": [{"name": "REPO", "value": source_url},
                    {"name": "DIR", "value": SOURCE_DIR},
                    {"name": "COMMIT", "value": commit or "HEAD"}],
            "volumeMounts": [{"name": "source", "mountPath": "/workspace"}],
        }]
        pod_spec["containers"][0]["volumeMounts"] = [{"name": "source",
                                                      "mountPath": "/workspace"}]
        pod_spec["volumes"] = [{"name": "source", "emptyDir": {}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": meta["namespace"], "labels": labels,
            "annotations": {f"{api.PREFIX}/run-key": f"{key.generation}/{key.trigger}",
                            **resource_annotations(resources)},
            "ownerReferences": [owner_reference(exp)],
        },
        "spec": {
            "backoffLimit": 0,  # Trellis' spec.retry decides about new attempts
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


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

    async def observe(self, namespace: str, name: str
                      ) -> tuple[str, str, podstate.Blocked | None]:
        """(state, message, why its pods are stuck) of the run's Job."""
        job = await self.children.get(JOBS, namespace, name)
        state, message = job_state(job.obj)
        if state not in ("running", "failed"):
            return state, message, None
        if state == "failed":
            # Listed, not cached: the Pods' watch may not have delivered their final
            # status yet, and this message is written once, when the run ends.
            pods = await self.kube.list(PODS, namespace, f"{LABEL_JOB_NAME}={name}")
            detail = podstate.failure_detail(pods)
            return state, f"{message}: {detail}" if detail else message, None
        return state, message, podstate.blocked(await self.children.pods_of_job(namespace, job))

    async def artifacts(self, flow_name: str, tags: dict[str, str]) -> dict[str, Any]:
        """The finished run's artifacts, read with the Metaflow client from S3."""
        return await asyncio.to_thread(_read_run, self.settings, flow_name, tags)


def _read_run(settings: Settings, flow_name: str, tags: dict[str, str]) -> dict[str, Any]:
    import os

    os.environ.setdefault("METAFLOW_DEFAULT_DATASTORE", "s3")
    os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_S3", settings.datastore_s3_root)
    from metaflow import Flow, namespace

    namespace(None)
    wanted = [f"{k}:{v}" for k, v in tags.items()]
    for run in Flow(flow_name).runs(*wanted):
        data = run.data
        return {"pathspec": run.pathspec, "metrics": dict(data.metrics),
                "model_uri": data.model_uri, "reference_uri": data.reference_uri,
                "commit": data.commit, "dataset_fingerprint": data.dataset_fingerprint,
                "epoch_metrics": list(data.epoch_metrics)}
    raise LookupError(f"no Metaflow run tagged {', '.join(wanted)}")
