"""Real git repositories for tests: a bare repository as the remote, a clone to commit in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Farmer Test", "GIT_AUTHOR_EMAIL": "farmer@example.com",
    "GIT_COMMITTER_NAME": "Farmer Test", "GIT_COMMITTER_EMAIL": "farmer@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
}

FLOW = '''"""A tiny flow for GitOps tests (never trained there)."""

from metaflow import FlowSpec, Parameter, step


class PumpkinFlow(FlowSpec):
    """Test flow: start, end."""

    lr = Parameter("lr", type=float, default=0.01, help="Learning rate.")
    epochs = Parameter("epochs", type=int, default=4, help="Epochs.")
    variety = Parameter("variety", type=str, default="orange", help="Variety.")

    @step
    def start(self):
        """Begin."""
        self.next(self.end)

    @step
    def end(self):
        """Finish."""
'''


def experiment(name: str = "classifier", namespace: str | None = "pumpkins", *, lr: float = 0.01,
               epochs: int = 4, gpu: int = 1, flow: str = "flows/pumpkin_flow.py",
               flow_name: str = "PumpkinFlow", backend: str = "local",
               extra_params: str = "") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"""apiVersion: mlops.trellis.dev/v1alpha1
kind: Experiment
metadata:
  name: {name}{ns}
spec:
  flow:
    file: {flow}
    name: {flow_name}
  parameters:
    lr: {lr}
    epochs: {epochs}{extra_params}
  resources:
    gpu: {gpu}
  objective:
    metric: accuracy
    goal: maximize
    threshold: 0.9
  backend: {backend}
"""


def deployment(name: str = "classifier", namespace: str | None = "pumpkins", *,
               experiment: str = "classifier", steps: str = "[10, 50, 100]",
               interval: str = "30s", drift: str = "") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"""apiVersion: mlops.trellis.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}{ns}
spec:
  model:
    experiment: {experiment}
    version: latest
  canary:
    steps: {steps}
    interval: {interval}{drift}
"""


class GitRepo:
    """``remote`` (bare, branch main) and ``work`` (a clone whose origin is ``remote``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        self._run(["git", "init", "--quiet", "--bare", "--initial-branch=main",
                   str(self.remote)], cwd=root)
        self._run(["git", "init", "--quiet", "--initial-branch=main", str(self.work)], cwd=root)
        self.git("remote", "add", "origin", str(self.remote))

    @staticmethod
    def _run(args: list[str], cwd: Path) -> str:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **GIT_ENV})
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {proc.stderr}")
        return proc.stdout.strip()

    def git(self, *args: str) -> str:
        return self._run(["git", *args], cwd=self.work)

    def write(self, rel: str, text: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def remove(self, rel: str) -> None:
        self.git("rm", "--quiet", rel)

    def commit(self, message: str) -> str:
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def push(self, *, force: bool = False, branch: str = "main") -> None:
        self.git("push", "--quiet", *(["--force"] if force else []), "origin",
                 f"HEAD:refs/heads/{branch}")

    def commit_and_push(self, message: str) -> str:
        sha = self.commit(message)
        self.push()
        return sha

    def move_remote_away(self) -> Path:
        """Make the remote unreachable (what an outage looks like to a fetch)."""
        away = self.root / "remote-away.git"
        shutil.move(str(self.remote), str(away))
        return away

    def bring_remote_back(self, away: Path) -> None:
        shutil.move(str(away), str(self.remote))
