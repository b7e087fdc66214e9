"""Rendered cluster objects: SeldonDeployment and the training Job (pure)."""

from __future__ import annotations

import json

import pytest

from controller.serving.seldon import Predictor, render
from controller.settings import Settings
from controller.training.decide import RunKey
from controller.training.kubernetes import job_name, job_state, render_job

MDEP = {
    "apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "classifier", "namespace": "pumpkins", "uid": "u-1"},
    "spec": {"replicas": 2, "model": {"experiment": "classifier"}},
}
EXP = {
    "apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
    "metadata": {"name": "classifier", "namespace": "pumpkins", "uid": "u-2"},
    "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
             "parameters": {"epochs": 3, "lr": 0.01, "augment": True},
             "resources": {"gpu": 1, "cpu": 4, "memory": 8192}},
}
SETTINGS = Settings(model_server_image="reg/model-server:1", trainer_image="reg/trainer:1",
                    datastore_s3_root="s3://bucket/mf", s3_endpoint_url="http://minio:9000")


def test_one_predictor_while_stable() -> None:
    sdep = render(MDEP, [Predictor("stable", 1, "s3://m/1", 100)], SETTINGS,
                  drift_logging=False)
    preds = sdep["spec"]["predictors"]
    assert [(p["name"], p["traffic"], p["labels"]["version"]) for p in preds] == [
        ("stable", 100, "v1")]
    assert preds[0]["replicas"] == 2
    assert preds[0]["graph"]["modelUri"] == "s3://m/1"
    assert "logger" not in preds[0]["graph"]
    assert preds[0]["componentSpecs"][0]["spec"]["containers"][0]["image"] == "reg/model-server:1"
    owner = sdep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", "u-1", True)


def test_two_predictors_during_a_rollout_with_logger() -> None:
    sdep = render(MDEP, [Predictor("stable", 1, "s3://m/1", 90),
                         Predictor("canary", 2, "s3://m/2", 10)], SETTINGS, drift_logging=True)
    preds = sdep["spec"]["predictors"]
    assert sum(p["traffic"] for p in preds) == 100
    assert [p["labels"]["version"] for p in preds] == ["v1", "v2"]
    # Seldon's executor fills predictor_version from the annotation, never the label.
    assert [p["annotations"]["version"] for p in preds] == ["v1", "v2"]
    assert all(p["graph"]["logger"] == {"mode": "all", "url": SETTINGS.request_logger_url}
               for p in preds)


def _env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_training_job_runs_the_whole_flow_in_one_pod() -> None:
    job = render_job(EXP, RunKey(3), 2, SETTINGS, parameters=EXP["spec"]["parameters"],
                     tags={"trellis.uid": "u-2"}, commit="abc123",
                     source_url="https://git.example/farm.git")
    assert job["metadata"]["name"] == "classifier-g3-a2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-2"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "controller.training.podrun"]
    env = _env(container)
    assert json.loads(env["TRELLIS_RUN_REQUEST"]) == {
        "flow_file": "/workspace/src/flows/pumpkin_flow.py", "flow_name": "PumpkinFlow",
        "parameters": {"epochs": 3, "lr": 0.01, "augment": True},
        "tags": {"trellis.uid": "u-2"}}
    # the exact quantities (8192 MiB stays 8192Mi), the GPU on this pod only
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "8192Mi"},
        "limits": {"memory": "8192Mi", "nvidia.com/gpu": "1"}}
    assert env["TRELLIS_DEVICE"] == "cuda"  # holding a GPU, never trains on the CPU
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"  # its cores, not the node's
    # a preempted or evicted pod is replaced, not counted against spec.retry
    assert job["spec"]["podFailurePolicy"]["rules"] == [{"action": "Ignore", "onPodConditions": [
        {"type": "DisruptionTarget", "status": "True"}]}]
    assert env["METAFLOW_DEFAULT_DATASTORE"] == "s3"
    assert env["METAFLOW_DATASTORE_SYSROOT_S3"] == "s3://bucket/mf"
    assert env["METAFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["METAFLOW_DEFAULT_METADATA"] == "local" and "METAFLOW_SERVICE_URL" not in env
    assert env["TRELLIS_MODEL_STORE"] == "s3://bucket/mf/models"
    assert env["TRELLIS_SOURCE_COMMIT"] == "abc123"
    # everything the run writes goes to the pod's scratch, not the read-only image
    for name in ("HOME", "TMPDIR", "METAFLOW_ARTIFACT_LOCALROOT", "TRELLIS_WORKDIR"):
        assert env[name].startswith("/work"), name
    assert container["envFrom"] == [{"secretRef": {"name": "trellis-s3"}}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    init = pod["initContainers"][0]
    assert _env(init)["COMMIT"] == "abc123"
    assert pod["automountServiceAccountToken"] is False


def test_cpu_only_runs_ask_for_no_gpu_and_use_the_metadata_service_when_set() -> None:
    exp = {**EXP, "spec": {**EXP["spec"], "resources": {"cpu": "500m", "memory": "2Gi"}}}
    settings = Settings(metaflow_service_url="http://metaflow-service:8080")
    job = render_job(exp, RunKey(1), 1, settings, parameters={}, tags={}, commit=None,
                     source_url=None)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = _env(container)
    assert env["TRELLIS_DEVICE"] == "cpu"
    assert json.loads(env["TRELLIS_RUN_REQUEST"])["flow_file"] == "/app/flows/pumpkin_flow.py"
    assert (env["METAFLOW_DEFAULT_METADATA"], env["METAFLOW_SERVICE_URL"]) == (
        "service", "http://metaflow-service:8080")
    assert "TRELLIS_SOURCE_COMMIT" not in env  # the flow asks git for it
    assert env["OMP_NUM_THREADS"] == "1"  # 500m: one thread
    assert "METAFLOW_S3_ENDPOINT_URL" not in env  # AWS itself


def test_every_trainer_container_meets_the_restricted_pod_security_profile() -> None:
    job = render_job(EXP, RunKey(1), 1, SETTINGS, parameters={}, tags={}, commit="c",
                     source_url="https://git.example/farm.git")
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*pod["initContainers"], *pod["containers"]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert c["resources"]["requests"]["memory"], c["name"]
    assert all("hostPath" not in v for v in pod["volumes"])


def test_scheduling_comes_from_the_operator_configuration() -> None:
    settings = Settings.from_env({
        "TRELLIS_TRAINER_NODE_SELECTOR": '{"pool": "gpu"}',
        "TRELLIS_TRAINER_TOLERATIONS":
            '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        "TRELLIS_TRAINER_IMAGE_PULL_SECRETS": "regcred, other",
        "TRELLIS_TRAINER_PRIORITY_CLASS": "training",
        "TRELLIS_TRAINER_DEADLINE_SECONDS": "3600",
    })
    job = render_job(EXP, RunKey(1), 1, settings, parameters={}, tags={}, commit=None,
                     source_url=None)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert pod["priorityClassName"] == "training"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    pools = Settings.from_env({
        "TRELLIS_TRAINER_NODE_SELECTOR": '{"zone": "a"}',
        "TRELLIS_TRAINER_GPU_NODE_SELECTOR": '{"pool": "gpu"}',
        "TRELLIS_TRAINER_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    })
    cpu_only = {**EXP, "spec": {**EXP["spec"], "resources": {"cpu": 2}}}
    on_gpu, on_cpu = (render_job(e, RunKey(1), 1, pools, parameters={}, tags={}, commit=None,
                                 source_url=None)["spec"]["template"]["spec"]
                      for e in (EXP, cpu_only))
    assert on_gpu["nodeSelector"] == {"zone": "a", "pool": "gpu"}
    assert on_gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert on_cpu["nodeSelector"] == {"zone": "a"} and "tolerations" not in on_cpu
    plain = render_job(EXP, RunKey(1), 1, Settings(), parameters={}, tags={}, commit=None,
                       source_url=None)["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "imagePullSecrets",
                "priorityClassName"} & plain.keys()


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("TRELLIS_TRAINER_NODE_SELECTOR", "pool=gpu", "not valid JSON"),
    ("TRELLIS_TRAINER_TOLERATIONS", '{"key": "x"}', "must be a JSON array"),
    ("TRELLIS_DEFAULT_TRAINING_BACKEND", "argo", "must be one of local, kubernetes"),
])
def test_malformed_trainer_settings_are_refused_with_their_name(name: str, raw: str,
                                                                says: str) -> None:
    with pytest.raises(ValueError, match=says) as err:
        Settings.from_env({name: raw})
    assert name in str(err.value)


def test_host_mounts_of_the_dev_node_are_read_only() -> None:
    settings = Settings(trainer_host_mounts={"/app/.venv": "/var/cache/envs/trainer"})
    pod = render_job(EXP, RunKey(1), 1, settings, parameters={}, tags={}, commit=None,
                     source_url=None)["spec"]["template"]["spec"]
    assert {"name": "host-0", "hostPath": {"path": "/var/cache/envs/trainer",
                                           "type": "Directory"}} in pod["volumes"]
    assert {"name": "host-0", "mountPath": "/app/.venv", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


def test_job_names_fit_and_differ_per_trigger() -> None:
    long = "x" * 80
    assert len(job_name(long, RunKey(12), 3)) <= 63
    assert job_name("e", RunKey(1, "ep-1"), 1) != job_name("e", RunKey(1, "ep-2"), 1)


def test_job_state() -> None:
    assert job_state(None)[0] == "lost"
    assert job_state({"status": {}})[0] == "running"
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert job_state(done)[0] == "succeeded"
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                         "message": "BackoffLimitExceeded"}]}}
    assert job_state(failed) == ("failed", "BackoffLimitExceeded")
