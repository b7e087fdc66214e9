"""The Trellis API surface: group, kinds, condition types, reasons, label keys.

Kept apart from the reconcilers (as Flux keeps its API types apart from its
controllers) so the CLI, the operator and the tests name things one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

GROUP: Final = "mlops.trellis.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
FIELD_MANAGER: Final = "trellis"


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and the names the API server knows it by."""

    kind: str
    plural: str
    short: str


EXPERIMENT: Final = Kind("Experiment", "experiments", "exp")
MODEL_DEPLOYMENT: Final = Kind("ModelDeployment", "modeldeployments", "mdep")
SPEC_REPOSITORY: Final = Kind("SpecRepository", "specrepositories", "specrepo")
KINDS: Final = (EXPERIMENT, MODEL_DEPLOYMENT, SPEC_REPOSITORY)
KINDS_BY_NAME: Final = {k.kind: k for k in KINDS}

# Annotations and labels: everything we own lives under our group's prefix.
PREFIX: Final = GROUP
ANN_RECONCILE_REQUESTED: Final = f"{PREFIX}/reconcile-requested-at"
ANN_SOURCE_REPO: Final = f"{PREFIX}/source-repository"
ANN_SOURCE_PATH: Final = f"{PREFIX}/source-path"
ANN_SOURCE_COMMIT: Final = f"{PREFIX}/source-commit"
ANN_SOURCE_URL: Final = f"{PREFIX}/source-url"
ANN_SOURCE_CHECKOUT: Final = f"{PREFIX}/source-checkout"
# On Experiments: "<namespace>/<name>" of the SpecRepository's credentials Secret, which
# the training Job's clone mounts; "" when the repository has none.
ANN_SOURCE_SECRET: Final = f"{PREFIX}/source-secret"
# Digest of the flow's Python code at the source commit (changes when the code does).
ANN_FLOW_REVISION: Final = f"{PREFIX}/flow-revision"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_SPECREPO: Final = f"{PREFIX}/specrepository"
LABEL_SPECREPO_NS: Final = f"{PREFIX}/specrepository-namespace"
LABEL_EXPERIMENT: Final = f"{PREFIX}/experiment"
LABEL_DEPLOYMENT: Final = f"{PREFIX}/modeldeployment"
LABEL_GENERATION: Final = f"{PREFIX}/generation"
MANAGED_BY: Final = "trellis"


class Cond:
    """Condition types. Ready is the summary; the others exist while they are true, but
    RequestLogging, which exists while drift logging is on (False: records are dropped)."""

    READY: Final = "Ready"
    STALLED: Final = "Stalled"
    PROGRESSING: Final = "Progressing"
    DRIFT_DETECTED: Final = "DriftDetected"
    ROLLED_BACK: Final = "RolledBack"
    ACCURACY_DEGRADED: Final = "AccuracyDegraded"
    REQUEST_LOGGING: Final = "RequestLogging"


class Reason:
    """Condition and Event reasons (CamelCase, stable: users grep for them)."""

    PROGRESSING: Final = "Progressing"
    # Experiment
    RUN_PENDING: Final = "RunPending"
    RUN_STARTED: Final = "RunStarted"
    RUN_RUNNING: Final = "RunRunning"
    RUN_FAILED: Final = "RunFailed"
    RUN_LOST: Final = "RunLost"
    RETRYING: Final = "Retrying"
    RETRIES_EXHAUSTED: Final = "RetriesExhausted"
    OBJECTIVE_NOT_MET: Final = "ObjectiveNotMet"
    MODEL_REGISTERED: Final = "ModelRegistered"
    FLOW_NOT_FOUND: Final = "FlowNotFound"
    INVALID_PARAMETERS: Final = "InvalidParameters"
    INVALID_RESOURCES: Final = "InvalidResources"
    LOCAL_TRAINING_DISABLED: Final = "LocalTrainingDisabled"
    SOURCE_SECRET_ELSEWHERE: Final = "SourceSecretInOtherNamespace"
    RETRAIN_REQUESTED: Final = "RetrainRequested"
    # ModelDeployment
    MODEL_NOT_READY: Final = "ModelNotReady"
    EXPERIMENT_NOT_FOUND: Final = "ExperimentNotFound"
    VERSION_NOT_FOUND: Final = "VersionNotFound"
    VERSION_REJECTED: Final = "VersionRejected"
    DEPLOYING: Final = "Deploying"
    SERVING: Final = "Serving"
    SERVING_FAILED: Final = "ServingFailed"
    CANARY_STARTED: Final = "CanaryStarted"
    CANARY_ADVANCED: Final = "CanaryAdvanced"
    CANARY_PROMOTED: Final = "CanaryPromoted"
    CANARY_ROLLED_BACK: Final = "CanaryRolledBack"
    AUTH_SECRET_MISSING: Final = "AuthSecretMissing"
    DRIFT_DETECTED: Final = "DriftDetected"
    DRIFT_CLEARED: Final = "DriftCleared"
    ACCURACY_BELOW_OBJECTIVE: Final = "AccuracyBelowObjective"
    LOGGING: Final = "Logging"
    LOG_FULL: Final = "LogFull"
    # SpecRepository
    SYNCED: Final = "Synced"
    FETCH_FAILED: Final = "FetchFailed"
    VALIDATION_FAILED: Final = "ValidationFailed"
    APPLY_FAILED: Final = "ApplyFailed"
    SUSPENDED: Final = "Suspended"
    # Any kind: a reconcile pass that failed (controller.failures says which and why)
    RECONCILE_FAILED: Final = "ReconcileFailed"
    API_UNAVAILABLE: Final = "APIUnavailable"
    REJECTED: Final = "Rejected"
    FORBIDDEN: Final = "Forbidden"
    UNAUTHORIZED: Final = "Unauthorized"
    RESOURCE_NOT_FOUND: Final = "ResourceNotFound"
    CONFLICT: Final = "Conflict"
    METRICS_UNAVAILABLE: Final = "MetricsUnavailable"
    MODEL_UNREADABLE: Final = "ModelUnreadable"
    STORAGE_UNAVAILABLE: Final = "StorageUnavailable"
    FEEDBACK_EXPORT_FAILED: Final = "FeedbackExportFailed"


class Phase:
    PENDING: Final = "Pending"
    RUNNING: Final = "Running"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    # ModelDeployment
    DEPLOYING: Final = "Deploying"
    SERVING: Final = "Serving"
    SERVING_FAILED: Final = "ServingFailed"
    PROGRESSING: Final = "Progressing"
    DEGRADED: Final = "Degraded"
