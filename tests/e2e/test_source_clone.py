"""The training Job's init container, run here for real: its own command and environment
(from ``render_job``, or from the Job the operator created), with the SpecRepository's
Secret written as the kubelet writes a secret volume, against a real git server that
wants credentials (``git http-backend`` behind Basic auth).

Only paths change: the pod's mount points become temporary directories, substituted in
the container's environment (the command names no path itself). The clone must land on
exactly the Experiment's commit with the right credentials, fail saying why with wrong or
missing ones, and never show a secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller import api
from controller.gitops import git_source
from controller.settings import Settings
from controller.training import clone
from controller.training.decide import RunKey
from controller.training.kubernetes import WORK_DIR, render_job
from tests.support.githttp import GitHttpServer
from tests.support.gitrepo import FLOW, GitRepo, experiment
from tests.support.kube import Cluster, wait_for

pytestmark = pytest.mark.e2e
USER, PASSWORD = "farmer", "pw-" + "q7w8e9r0t1y2" * 2
TOKEN = "tok-" + "z1x2c3v4b5n6" * 2


@pytest.fixture
def farm(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "farm")
    repo.write("flows/pumpkin_flow.py", FLOW)
    repo.write("specs/experiment.yaml", experiment(namespace=None, gpu=0, backend="kubernetes"))
    repo.commit_and_push("the farm's specs")
    return repo


def secret_volume(root: Path, data: dict[str, str] | None) -> Path:
    """``data`` as the kubelet lays out a secret volume (``defaultMode: 0400``): files in
    a timestamped directory, ``..data`` pointing at it, one link per key. ``None``: the
    optional volume of a Secret that does not exist (nothing in it)."""
    root.mkdir(parents=True)
    stamp = root / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir()
    (root / "..data").symlink_to(stamp.name)
    for key, value in (data or {}).items():
        (stamp / key).write_text(value + "\n")  # as `kubectl create secret --from-file`
        (stamp / key).chmod(clone.CREDENTIALS_MODE)
        (root / key).symlink_to(f"..data/{key}")
    return root


def run_init(pod: dict[str, Any], root: Path, secret: dict[str, str] | None
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the pod's init container here: (the process, the clone's directory)."""
    [init] = pod["initContainers"]
    script = init["command"][-1]
    for path in (clone.CREDENTIALS_DIR, clone.SOURCE_MOUNT, WORK_DIR):
        assert path not in script  # the paths come from the environment alone
    creds, workspace, work = root / "creds", root / "workspace", root / "work"
    workspace.mkdir(parents=True)
    work.mkdir()
    if any(m["mountPath"] == clone.CREDENTIALS_DIR for m in init["volumeMounts"]):
        secret_volume(creds, secret)
    env = {e["name"]: e["value"].replace(clone.CREDENTIALS_DIR, str(creds))
           .replace(clone.SOURCE_MOUNT, str(workspace)) for e in init["env"]}
    assert env["HOME"] == WORK_DIR
    env["HOME"] = str(work)
    proc = subprocess.run(init["command"], env={"PATH": os.environ["PATH"],
                                                "GIT_CONFIG_NOSYSTEM": "1", **env},
                          capture_output=True, text=True, timeout=120, check=False)
    return proc, Path(env["DIR"])


def head(directory: Path) -> str:
    return GitRepo._run(["git", "rev-parse", "HEAD"], cwd=directory)


def pod_for(url: str, commit: str, secret: str | None) -> dict[str, Any]:
    exp = {"apiVersion": api.API_VERSION, "kind": "Experiment",
           "metadata": {"name": "classifier", "namespace": "pumpkins", "uid": "u-1",
                        "annotations": {api.ANN_SOURCE_SECRET:
                                            f"pumpkins/{secret}" if secret else ""}},
           "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"}}}
    job = render_job(exp, RunKey(1), 1, Settings(), parameters={}, tags={}, commit=commit,
                     source_url=url, source_secret=clone.pod_secret(exp))
    return job["spec"]["template"]["spec"]


def never_shown(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def test_the_operators_job_clones_exactly_its_commit_with_the_specrepositorys_secret(
        cluster: Cluster, namespace: str, operator: None, farm: GitRepo,
        tmp_path: Path) -> None:
    with GitHttpServer(farm.root, USER, PASSWORD) as server:
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "farm-git"},
                       "stringData": {"username": USER, "password": PASSWORD}}, namespace)
        cluster.apply({"apiVersion": api.API_VERSION, "kind": "SpecRepository",
                       "metadata": {"name": "farm"},
                       "spec": {"url": server.url("remote.git"), "ref": {"branch": "main"},
                                "path": "specs", "interval": "1h",
                                "secretRef": {"name": "farm-git"}}}, namespace)
        synced = farm.head()

        def job() -> dict[str, Any] | None:
            out = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json", "-l",
                                  f"{api.LABEL_EXPERIMENT}=classifier").stdout
            return (json.loads(out)["items"] or [None])[0]

        created = wait_for(job, timeout=60, what="the training Job")
        exp = cluster.get("experiment", "classifier", namespace)
        assert exp["metadata"]["annotations"][api.ANN_SOURCE_SECRET] == f"{namespace}/farm-git"
        assert server.attempts and all(ok for _, ok in server.attempts)  # the sync's fetch

        farm.write("flows/pumpkin_flow.py", FLOW.replace("Test flow", "Newer flow"))
        farm.commit_and_push("newer code the run must not pick up")
        pod = created["spec"]["template"]["spec"]
        proc, src = run_init(pod, tmp_path / "good", {"username": USER, "password": PASSWORD})
        assert proc.returncode == 0, proc.stderr
        assert head(src) == synced
        assert "Test flow" in (src / "flows" / "pumpkin_flow.py").read_text()
        assert GitRepo._run(["git", "rev-parse", "--is-shallow-repository"], cwd=src) == "true"
        assert proc.stdout.strip() == f"source: {server.url('remote.git')} at {synced}"

        tried = len(server.attempts)
        bad, _ = run_init(pod, tmp_path / "bad", {"username": USER, "password": "wrong"})
        assert bad.returncode != 0
        assert bad.stderr.strip().splitlines()[-1] == (
            f"fatal: Authentication failed for '{server.url('remote.git')}/'")
        assert server.attempts[tried:] == [(USER, False)]  # asked once, not again
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    files = b"".join(p.read_bytes() for p in (tmp_path / "good" / "workspace").rglob("*")
                     if p.is_file()).decode(errors="replace")
    never_shown(PASSWORD, json.dumps(created), json.dumps(exp), events, proc.stdout,
                proc.stderr, bad.stdout, bad.stderr, files)


def test_a_token_serves_the_operators_fetch_and_the_pods_clone_alike(
        farm: GitRepo, tmp_path: Path) -> None:
    """One Secret, one set of key names: ``token`` alone is the password of user git."""
    commit = farm.head()
    with GitHttpServer(farm.root, git_source.DEFAULT_USERNAME, TOKEN) as server:
        creds = git_source.Credentials.from_secret({"token": TOKEN.encode()})
        fetched = asyncio.run(git_source.fetch(tmp_path / "cache", "pumpkins", "farm",
                                               server.url("remote.git"), {"branch": "main"},
                                               creds))
        proc, src = run_init(pod_for(server.url("remote.git"), commit, "farm-git"),
                             tmp_path / "pod", {"token": TOKEN})
    assert fetched == commit
    assert proc.returncode == 0, proc.stderr
    assert head(src) == commit
    never_shown(TOKEN, proc.stdout, proc.stderr)


def test_a_server_refusing_a_commit_by_id_gets_a_full_fetch_of_the_same_commit(
        farm: GitRepo, tmp_path: Path) -> None:
    first = farm.head()
    farm.write("flows/pumpkin_flow.py", FLOW.replace("Test flow", "Newer flow"))
    farm.commit_and_push("newer")
    with GitHttpServer(farm.root, USER, PASSWORD, protocol_v2=False) as server:
        proc, src = run_init(pod_for(server.url("remote.git"), first, "farm-git"),
                             tmp_path / "pod", {"username": USER, "password": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    assert "Server does not allow request for unadvertised object" in proc.stderr
    assert head(src) == first
    assert "Test flow" in (src / "flows" / "pumpkin_flow.py").read_text()


def test_a_missing_secret_fails_the_clone_saying_so(farm: GitRepo, tmp_path: Path) -> None:
    """The volume is optional: a Secret deleted after the sync leaves an empty mount, and
    the clone ends with git's reason instead of a pod waiting for its volume."""
    with GitHttpServer(farm.root, USER, PASSWORD) as server:
        proc, _ = run_init(pod_for(server.url("remote.git"), farm.head(), "farm-git"),
                           tmp_path / "pod", None)
        assert server.attempts == []  # nothing to offer, no prompt to hang on
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("warning: the SpecRepository's Secret farm-git is missing")
    assert "could not read Username" in lines[-1] and "terminal prompts disabled" in lines[-1]


def test_ssh_uses_the_mounted_identity_and_trusts_only_its_known_hosts(
        farm: GitRepo, tmp_path: Path) -> None:
    pod = pod_for("ssh://git@git.example/farm.git", farm.head(), "farm-git")
    # An identity without known_hosts is refused before anything is contacted.
    proc, _ = run_init(pod, tmp_path / "nohosts", {"identity": "KEY"})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"Secret farm-git: {git_source.NO_KNOWN_HOSTS}"
    # What the real ssh client makes of GIT_SSH_COMMAND (-G: its effective settings,
    # without connecting).
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    creds = secret_volume(tmp_path / "creds", {"identity": "KEY",
                                               "known_hosts": "git.example ssh-ed25519 AAAA"})
    command = env["GIT_SSH_COMMAND"].replace(clone.CREDENTIALS_DIR, str(creds))
    out = subprocess.run([*shlex.split(command), "-G", "git@git.example"], capture_output=True,
                         text=True, timeout=30, check=True,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}).stdout
    settings = [tuple(line.split(" ", 1)) for line in out.splitlines()]
    assert [v for k, v in settings if k == "identityfile"] == [
        str(creds / git_source.KEY_IDENTITY)]  # that key alone
    assert ("userknownhostsfile", str(creds / git_source.KEY_KNOWN_HOSTS)) in settings
    assert ("stricthostkeychecking", "true") in settings
    assert ("batchmode", "yes") in settings
    assert ("identitiesonly", "yes") in settings
