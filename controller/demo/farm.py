"""The farm's spec repository: what a team would keep in git next to its flows.

A bare repository plays the remote (what GitHub would be), a clone is the team's work
tree; the demo makes real commits, a branch for the pull request, and a merge. In
cluster mode the operator's pods and the training pods clone it over HTTP
(``GitHttpServer``: git's "dumb" HTTP protocol, static files on the node's bridge
address), as they would clone from GitHub.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from controller import api
from controller.paths import FLOWS_DIR

NAMESPACE = "pumpkins"
FLOW_FILES = ("pumpkin_flow.py", "pumpkin_data.py", "pumpkin_model.py")


def experiment(*, lr: float = 0.003, epochs: int = 4, backend: str = "local",
               resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """``backend: kubernetes`` trains in a pod (cluster mode), sized by ``resources``."""
    return {
        "apiVersion": api.API_VERSION, "kind": "Experiment",
        "metadata": {"name": "classifier", "namespace": NAMESPACE},
        "spec": {
            "flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
            "parameters": {"seed": 7, "epochs": epochs, "lr": lr, "variety": "orange"},
            "resources": resources or {"gpu": 0, "cpu": 2, "memory": 4096},
            "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9},
            "backend": backend,
            "retry": {"limit": 1, "backoffSeconds": 5},
            "retrain": {"cooldownSeconds": 0, "includeFeedback": True},
        },
    }


def deployment(*, interval: str = "10s") -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": "ModelDeployment",
        "metadata": {"name": "classifier", "namespace": NAMESPACE},
        "spec": {
            "model": {"experiment": "classifier", "version": "latest"},
            "replicas": 1,
            "canary": {"steps": [10, 50, 100], "interval": interval,
                       "analysis": {"minRequests": 10, "maxErrorRate": 0.05,
                                    "maxLatencyP99Ms": 2000,
                                    # a retrained model is *meant* to disagree with the
                                    # stale one on the new pumpkins
                                    "maxPredictionShift": 0.6}},
            # p=0.001: the drift check runs every few seconds over a sliding window, so
            # a smaller per-test level keeps false alarms rare over a whole season.
            "drift": {"enabled": True, "test": "ks", "window": 200, "minSamples": 100,
                      "pValue": 0.001, "action": "retrain", "cooldown": "30s"},
            "backend": "local",
        },
    }


def _dump(doc: dict[str, Any], comment: str) -> str:
    return f"# {comment}\n" + yaml.safe_dump(doc, sort_keys=False)


class FarmRepo:
    """A work tree with a bare ``origin``; every call is a real git command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = root / "farm.git"
        self.work = root / "farm"

    def git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.work), *args], capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create(self, exp: dict[str, Any] | None = None,
               mdep: dict[str, Any] | None = None) -> str:
        """The first commit: the flows and the specs (default: the local-mode farm's
        Experiment and ModelDeployment), pushed to ``origin``."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.remote)],
                       check=True, timeout=60)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.work)], check=True,
                       timeout=60)
        self.git("config", "user.name", "Farm Team")
        self.git("config", "user.email", "team@pumpkin.farm")
        self.git("remote", "add", "origin", str(self.remote))
        (self.work / "flows").mkdir()
        for name in FLOW_FILES:
            shutil.copy(FLOWS_DIR / name, self.work / "flows" / name)
        if exp is None:
            exp, mdep = experiment(), deployment()
        self.write_specs(exp, mdep)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "Plant the farm: pumpkin classifier"
                 + (" and its deployment" if mdep else ""))
        self.push("main")
        return self.git("rev-parse", "HEAD")

    def push(self, branch: str) -> None:
        self.git("push", "-q", "origin", branch)
        # What git's dumb HTTP clients read (info/refs, objects/info/packs).
        subprocess.run(["git", "--git-dir", str(self.remote), "update-server-info"],
                       check=True, timeout=60)

    def write_specs(self, exp: dict[str, Any], mdep: dict[str, Any] | None) -> None:
        specs = self.work / "specs"
        specs.mkdir(exist_ok=True)
        (specs / "experiment.yaml").write_text(
            _dump(exp, "Good vs bad pumpkins from 64x64 photos."))
        if mdep is not None:
            (specs / "modeldeployment.yaml").write_text(
                _dump(mdep, "Serve the latest good model; canary every new version."))

    def pull_request(self, branch: str, exp: dict[str, Any], mdep: dict[str, Any],
                     message: str) -> str:
        self.git("checkout", "-q", "-b", branch)
        self.write_specs(exp, mdep)
        self.git("commit", "-q", "-am", message)
        return self.git("rev-parse", "HEAD")

    def merge(self, branch: str) -> str:
        self.git("checkout", "-q", "main")
        self.git("merge", "-q", "--no-ff", "-m", f"Merge pull request: {branch}", branch)
        self.push("main")
        return self.git("rev-parse", "HEAD")


class _RepoFiles(SimpleHTTPRequestHandler):
    """Files of one directory under ``/<its name>/``; nothing else (no listing above it)."""

    def translate_path(self, path: str) -> str:
        prefix = "/" + Path(self.directory).name + "/"
        if not path.startswith(prefix):
            return str(Path(self.directory) / ".missing")
        return super().translate_path(path[len(prefix) - 1:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


class GitHttpServer:
    """The bare repository over HTTP on ``host`` (a free port): git's dumb HTTP
    protocol, read-only; ``FarmRepo.push`` keeps its index current."""

    def __init__(self, repo: FarmRepo, host: str) -> None:
        handler = functools.partial(_RepoFiles, directory=str(repo.remote))
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/{repo.remote.name}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="git-http")
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
