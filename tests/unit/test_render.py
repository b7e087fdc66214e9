"""Rendered cluster objects: SeldonDeployment and the training Job (pure)."""

from __future__ import annotations

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


def test_training_job() -> None:
    job = render_job(EXP, RunKey(3), 2, SETTINGS, parameters=EXP["spec"]["parameters"],
                     tags={"trellis.uid": "u-2"}, commit="abc123",
                     source_url="https://git.example/farm.git")
    assert job["metadata"]["name"] == "classifier-g3-a2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-2"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["python", "/workspace/src/flows/pumpkin_flow.py"]
    assert "run" in cmd and "--with" in cmd
    decorator = cmd[cmd.index("--with") + 1]
    assert decorator.startswith("kubernetes:image=reg/trainer:1")
    # 8192 MiB in MB, rounded up (Metaflow writes "<n>M" into the step pods)
    assert "gpu=1" in decorator and "cpu=4" in decorator and "memory=8590" in decorator
    assert cmd[cmd.index("--epochs") + 1] == "3" and cmd[cmd.index("--augment") + 1] == "true"
    assert cmd[cmd.index("--tag"):cmd.index("--tag") + 2] == ["--tag", "trellis.uid:u-2"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["METAFLOW_DATASTORE_SYSROOT_S3"] == "s3://bucket/mf"
    assert env["METAFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["TRELLIS_SOURCE_COMMIT"] == "abc123"
    init = pod["initContainers"][0]
    assert {e["name"]: e["value"] for e in init["env"]}["COMMIT"] == "abc123"


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
