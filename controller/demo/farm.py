"""The farm's spec repository: what a team would keep in git next to its flows.

A bare repository plays the remote (what GitHub would be), a clone is the team's work
tree; the demo makes real commits, a branch for the pull request, and a merge.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from controller import api
from controller.paths import FLOWS_DIR

NAMESPACE = "pumpkins"
FLOW_FILES = ("pumpkin_flow.py", "pumpkin_data.py", "pumpkin_model.py")


def experiment(*, lr: float = 0.003, epochs: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": "Experiment",
        "metadata": {"name": "classifier", "namespace": NAMESPACE},
        "spec": {
            "flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
            "parameters": {"seed": 7, "epochs": epochs, "lr": lr, "variety": "orange"},
            "resources": {"gpu": 0, "cpu": 2, "memory": 4096},
            "objective": {"metric": "accuracy", "goal": "maximize", "threshold": 0.9},
            "backend": "local",
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

    def create(self) -> str:
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
        self.write_specs(experiment(), deployment())
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "Plant the farm: pumpkin classifier and its deployment")
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def write_specs(self, exp: dict[str, Any], mdep: dict[str, Any]) -> None:
        specs = self.work / "specs"
        specs.mkdir(exist_ok=True)
        (specs / "experiment.yaml").write_text(
            _dump(exp, "Good vs bad pumpkins from 64x64 photos."))
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
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")
