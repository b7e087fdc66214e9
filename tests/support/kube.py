"""Test helpers around the real API server: kubectl, polling, operators in and out of process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from controller.devcluster.cluster import DevCluster
from controller.paths import ROOT

T = TypeVar("T")


class Cluster:
    """A running dev cluster as the tests see it: kubectl and a few typed reads."""

    def __init__(self, dev: DevCluster) -> None:
        self.dev = dev
        st = dev.state()
        assert st is not None
        self.kubeconfig = st.kubeconfig
        self.kubectl_path = st.kubectl

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.dev.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, manifest: str | dict | list, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": manifest}
            if isinstance(manifest, list) else manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, input=text)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def create_namespace(self, name: str) -> str:
        self.kubectl("create", "namespace", name, check=False)
        return name

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": self.kubeconfig}


def wait_for(fn: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.25,
             what: str = "condition") -> T:
    """Poll ``fn`` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return None


class OperatorProcess:
    """The operator as a separate process (``python -m controller``): for kill -9 tests."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str] | None = None):
        self.env = env
        self.log_path = log_path
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", *self.args],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbyes (what a node failure looks like)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def operator_process(env: dict[str, str], log_path: Path,
                     args: list[str] | None = None) -> Iterator[OperatorProcess]:
    op = OperatorProcess(env, log_path, args).start()
    try:
        yield op
    finally:
        op.stop()


def healthy(port: int) -> bool:
    """Whether the operator's metrics server on ``port`` answers ``/healthz`` with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
