"""Operator settings: one class, read from ``TRELLIS_*`` environment variables.

Read when the operator starts (never at import time), so tests and the CLI can set
the environment first; the manifests' ConfigMap feeds the same variables in a cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from controller.paths import ROOT

PREFIX = "TRELLIS_"
TRAINING_BACKENDS = ("local", "kubernetes")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "trellis"


def _default_registry_dir() -> Path:
    return _default_state_dir().with_name("trellis-operators")


@dataclass(frozen=True)
class Settings:
    # Where local-mode work lives: Metaflow datastore, model store, serving state, logs.
    state_dir: Path = field(default_factory=_default_state_dir)
    # Where each operator notes its state dir and cluster when it starts, so that
    # `trellis dev-cluster down` can stop the local-mode processes it leaves running.
    registry_dir: Path = field(default_factory=_default_registry_dir)
    # Python of the model-server environment (seldon-core 1.17.1).
    serving_python: Path = ROOT / ".venv-serving" / "bin" / "python"
    # Python that runs training flows locally (the operator's own by default).
    training_python: str = ""
    # Whether `backend: local` may train inside the operator's own process. An operator
    # running as a pod (2 CPUs, no GPU, no torch in its image) sets this false.
    allow_local_training: bool = True
    # Where flow files are found when an Experiment did not come from a SpecRepository.
    flows_root: Path = ROOT
    # Seconds between level-triggered resyncs of an object when nothing wakes it.
    resync_seconds: float = 60.0
    # The backend of Experiments that do not name one. An operator running as a pod
    # sets `kubernetes` (manifests/operator-config.yaml): training belongs in pods sized
    # for it, not in the operator's.
    default_training_backend: str = "local"
    # Cluster-mode training (backend: kubernetes): one pod per run (the Job's), from the
    # trainer image, under the restricted Pod Security profile.
    trainer_image: str = "ghcr.io/trellis-mlops/trainer:0.1.0"
    trainer_service_account: str = "trellis-trainer"
    # Scheduling of trainer pods: JSON ({"pool": "gpu"}, [{"key": ..., "operator": ...}]),
    # the pull secrets as names (comma-separated or a JSON list).
    trainer_node_selector: dict[str, str] = field(default_factory=dict)
    trainer_tolerations: list[dict[str, Any]] = field(default_factory=list)
    # Added for runs that ask for a GPU only (a GPU pool's label and taint), so CPU-only
    # runs stay off the GPU nodes: merged into / appended to the two above.
    trainer_gpu_node_selector: dict[str, str] = field(default_factory=dict)
    trainer_gpu_tolerations: list[dict[str, Any]] = field(default_factory=list)
    trainer_image_pull_secrets: list[str] = field(default_factory=list)
    trainer_priority_class: str = ""
    # A run that has not ended after this long is stopped (the Job's activeDeadlineSeconds).
    trainer_deadline_seconds: int = 86400
    # Host directories mounted read-only into trainer pods ({"/app/.venv": "/host/dir"}):
    # the dev node's images keep their CUDA-sized environments on the host
    # (controller/devcluster/images.py). Never set in a real cluster.
    trainer_host_mounts: dict[str, str] = field(default_factory=dict)
    # Metaflow's metadata service, when the cluster runs one: runs then show in its UI.
    # Empty: the run's metadata stays in its pod, and the operator learns the outcome
    # from the pod's termination message (controller/training/podrun.py).
    metaflow_service_url: str = ""
    datastore_s3_root: str = "s3://trellis/metaflow"
    s3_endpoint_url: str = ""
    s3_secret: str = "trellis-s3"
    # Cluster-mode serving (backend: seldon).
    model_server_image: str = "ghcr.io/trellis-mlops/model-server:0.1.0"
    request_logger_url: str = "http://trellis-operator.trellis-system.svc:8081/"
    # Where this operator receives those CloudEvents (0: a free port, < 0: off).
    request_logger_port: int = 8081
    # The store every replica's receiver appends those events to and the active replica
    # keeps the drift log's copy in (docs/architecture.md, "Drift inputs in a cluster"):
    # s3://<bucket>/<prefix> in a cluster, shared by the replicas. Empty: a directory
    # under state_dir, which only a single operator process can use.
    request_log_store: str = ""
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    # The labels canary queries select Seldon's executor series by. The executor exports
    # `deployment_name`; `namespace` exists only when the scrape adds it (a PodMonitor or
    # the standard kubernetes-pods job; Seldon's analytics chart names it
    # `kubernetes_namespace`). Empty: that label is not filtered on.
    prometheus_namespace_label: str = "namespace"
    prometheus_deployment_label: str = "deployment_name"
    # The ingress (Istio/Ambassador) base URL that serves Seldon's traffic split at
    # <gateway>/seldon/<ns>/<name>/api/v1.0/predictions. Empty: status shows Seldon's own
    # address, the first predictor's Service, which bypasses the split.
    seldon_gateway_url: str = ""
    # Seconds between drift checks of a deployment while new inputs arrive.
    drift_interval_seconds: float = 5.0
    # Labelled live inputs since a drift onset before a drift-triggered retrain starts.
    retrain_min_labels: int = 200
    # Operator endpoints.
    metrics_port: int = 8000
    webhook_port: int = 8001
    log_format: str = "json"

    def __post_init__(self) -> None:
        if self.default_training_backend not in TRAINING_BACKENDS:
            raise ValueError(f"{PREFIX}DEFAULT_TRAINING_BACKEND must be one of "
                             f"{', '.join(TRAINING_BACKENDS)}, not "
                             f"{self.default_training_backend!r}")
        if self.request_log_store:
            from controller.objectstore import parse

            try:
                parse(self.request_log_store)
            except ValueError as exc:
                raise ValueError(f"{PREFIX}REQUEST_LOG_STORE: {exc}") from None

    def training_backend(self, spec: dict[str, Any]) -> str:
        """An Experiment's backend: its own, or this operator's default."""
        return spec.get("backend") or self.default_training_backend

    @property
    def datastore_root(self) -> Path:
        return self.state_dir / "metaflow"

    @property
    def model_store(self) -> Path:
        return self.state_dir / "models"

    @property
    def serving_state_dir(self) -> Path:
        return self.state_dir / "serving"

    @property
    def request_log_dir(self) -> Path:
        return self.state_dir / "requestlog"

    @property
    def request_log_store_uri(self) -> str:
        return self.request_log_store or str(self.state_dir / "requestlog-store")

    @property
    def repo_cache_dir(self) -> Path:
        return self.state_dir / "repos"

    @property
    def training_dir(self) -> Path:
        return self.state_dir / "training"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("Path",):
                values[f.name] = Path(raw).expanduser()
            elif f.type == "float":
                values[f.name] = float(raw)
            elif f.type == "int":
                values[f.name] = int(raw)
            elif f.type == "bool":
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif f.type == "list[str]" and not raw.lstrip().startswith("["):
                values[f.name] = [part.strip() for part in raw.split(",") if part.strip()]
            elif f.type.startswith(("dict[", "list[")):
                values[f.name] = _json_setting(PREFIX + f.name.upper(), raw,
                                               dict if f.type.startswith("dict") else list)
            else:
                values[f.name] = raw
        return cls(**values)


def _json_setting(name: str, raw: str, kind: type) -> Any:
    """A structured setting, written as JSON in the ConfigMap; a clear error otherwise."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {'object' if kind is dict else 'array'}, "
                         f"not {raw!r}")
    return value
