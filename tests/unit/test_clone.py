"""The training Job's source clone (pure): the SpecRepository's Secret reaches the init
container only, as a read-only volume git reads through a credential helper or
GIT_SSH_COMMAND; an Experiment whose Secret is in another namespace is refused before
any Job exists. tests/e2e/test_source_clone.py runs the rendered command against a real
authenticated git server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from controller import api
from controller.gitops import git_source
from controller.reconcilers.experiments import ExperimentReconciler
from controller.settings import Settings
from controller.training import clone
from controller.training.decide import RunKey
from controller.training.kubernetes import render_job
from controller.training.preflight import cluster_source
from tests.unit.test_experiment_flow_revision import offline

SETTINGS = Settings(trainer_image="reg/trainer:1", datastore_s3_root="s3://bucket/mf")
URL = "https://git.example/farm.git"


def experiment(secret: str | None, namespace: str = "pumpkins",
               backend: str = "kubernetes") -> dict[str, Any]:
    ann = {api.ANN_SOURCE_REPO: "pumpkins/farm", api.ANN_SOURCE_URL: URL,
           api.ANN_SOURCE_COMMIT: "c" * 40,
           api.ANN_SOURCE_SECRET: f"pumpkins/{secret}" if secret else ""}
    return {"apiVersion": api.API_VERSION, "kind": "Experiment",
            "metadata": {"name": "classifier", "namespace": namespace, "uid": "u-1",
                         "generation": 1, "annotations": ann},
            "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                     "parameters": {}, "backend": backend, "resources": {"gpu": 0},
                     "objective": {"metric": "accuracy", "goal": "maximize",
                                   "threshold": 0.9}}}


def pod_of(exp: dict[str, Any]) -> dict[str, Any]:
    job = render_job(exp, RunKey(1), 1, SETTINGS, parameters={}, tags={}, commit="c" * 40,
                     source_url=URL, source_secret=clone.pod_secret(exp))
    return job["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_secret_is_a_read_only_volume_of_the_init_container_only() -> None:
    pod = pod_of(experiment("farm-git"))
    [init], [flow] = pod["initContainers"], pod["containers"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "farm-git", "defaultMode": 0o400,
                                "optional": True}
    [mount] = [m for m in init["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": clone.CREDENTIALS_DIR,
                     "readOnly": True}
    # The flow runs the team's code: it sees neither the volume nor where it would be.
    assert volume["name"] not in {m["name"] for m in flow["volumeMounts"]}
    assert clone.CREDENTIALS_DIR not in json.dumps(flow)
    assert "farm-git" not in json.dumps(flow)
    # Never as environment: no secretKeyRef, no envFrom of it, anywhere.
    assert "secretKeyRef" not in json.dumps(pod)
    assert flow["envFrom"] == [{"secretRef": {"name": SETTINGS.s3_secret}}]
    assert "envFrom" not in init
    assert init["securityContext"] == flow["securityContext"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_git_reads_the_mounted_files_through_its_own_settings() -> None:
    env = env_of(pod_of(experiment("farm-git"))["initContainers"][0])
    assert env["HOME"] == "/work"  # git's and ssh's state off the read-only root
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["TRELLIS_GIT_CREDENTIALS"] == clone.CREDENTIALS_DIR
    assert (env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"]) == ("1", "credential.helper")
    helper = env["GIT_CONFIG_VALUE_0"]
    # The Secret's keys, as the operator's own fetch reads them (one list).
    for key in (git_source.KEY_USERNAME, git_source.KEY_PASSWORD, git_source.KEY_TOKEN):
        assert f'"$d/{key}"' in helper
    ssh = env["GIT_SSH_COMMAND"]
    assert ssh == git_source.ssh_command(f"{clone.CREDENTIALS_DIR}/identity",
                                         f"{clone.CREDENTIALS_DIR}/known_hosts")
    assert f"-i {clone.CREDENTIALS_DIR}/identity" in ssh
    assert f"-o UserKnownHostsFile={clone.CREDENTIALS_DIR}/known_hosts" in ssh
    assert "-o StrictHostKeyChecking=yes" in ssh and "-o BatchMode=yes" in ssh
    assert (env["REPO"], env["COMMIT"], env["DIR"]) == (URL, "c" * 40, clone.SOURCE_DIR)


def test_no_secret_text_anywhere_in_the_job() -> None:
    """The render never reads the Secret: the Job names it, and nothing of what it holds
    (the URL on the Experiment carries no user info either)."""
    exp = experiment("farm-git")
    job = render_job(exp, RunKey(1), 1, SETTINGS, parameters={}, tags={}, commit="c" * 40,
                     source_url=URL, source_secret=clone.pod_secret(exp))
    text = json.dumps(job)
    assert text.count("farm-git") == 2  # the volume's secretName, the init's message name
    assert "password=" not in text.replace("password=%s", "")  # only the helper's format
    assert "@" not in env_of(job["spec"]["template"]["spec"]["initContainers"][0])["REPO"]


def test_without_credentials_nothing_is_mounted_and_nothing_prompts() -> None:
    pod = pod_of(experiment(None))
    init = pod["initContainers"][0]
    env = env_of(init)
    assert not any("secret" in v for v in pod["volumes"])
    assert {m["name"] for m in init["volumeMounts"]} == {"source", "work"}
    assert "TRELLIS_GIT_CREDENTIALS" not in env and "GIT_CONFIG_COUNT" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -o BatchMode=yes -o ConnectTimeout=30"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_a_secret_in_another_namespace_is_reported_not_mounted() -> None:
    here, elsewhere = experiment("farm-git"), experiment("farm-git", namespace="orchard")
    assert clone.secret_ref(elsewhere) == ("pumpkins", "farm-git")
    assert clone.secret_problem(here) is None and cluster_source(here) is None
    assert clone.pod_secret(elsewhere) is None  # never a pod waiting on a missing mount
    check = cluster_source(elsewhere)
    assert check is not None and check.reason == "SourceSecretInOtherNamespace"
    assert "Secret pumpkins/farm-git" in check.problem
    assert "SpecRepository pumpkins/farm" in check.problem
    assert "own namespace (orchard)" in check.problem
    assert clone.secret_problem(experiment(None, namespace="orchard")) is None


def test_the_experiment_stalls_with_the_reason_before_any_job(tmp_path: Path) -> None:
    """Driven through the reconciler without an API server: the refusal comes before
    anything is launched (a Job would need one)."""
    rec = ExperimentReconciler(offline(tmp_path))
    out = asyncio.run(rec.reconcile(experiment("farm-git", namespace="orchard")))
    assert out.status.get("currentRun") is None and out.requeue_after is None
    conds = {c["type"]: c for c in out.status["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert conds["Stalled"]["reason"] == api.Reason.SOURCE_SECRET_ELSEWHERE
    assert "keep the Experiment in namespace pumpkins" in conds["Stalled"]["message"]
    # A local run reads the operator's checkout: no pod, no Secret to mount.
    local = experiment("farm-git", namespace="orchard", backend="local")
    assert rec._cluster_source(local) is None
