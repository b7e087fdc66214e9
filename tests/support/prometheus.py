"""A real Prometheus for the tests: Debian's 2.42 binary (``binaries.ensure_prometheus``)
scraping what a test registers, queried by the operator's real PromQL.

One server per test, listening on loopback only, scraping every second. Targets come
from ``file_sd`` files the test rewrites at runtime (``set_targets``): each target carries
the labels a cluster's scrape would add (the namespace, under whichever label name the
test's scheme uses) and its metrics path, as Kubernetes service discovery plus a
PodMonitor's relabelling would. Prometheus applies a changed target list within about
5 s (its discovery and scrape managers batch updates), so a new target is scraped some
seconds after it is registered, as in a cluster.

Storage lives in the test's directory. ``stop`` ends the process with a deadline, then
SIGKILL (``controller.processes.terminate``); ``start`` again brings it back on the same
port with the same data, which is how a test makes Prometheus unreachable for a while.
Every query the server answers is in ``queries()`` (Prometheus' own query log).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.devcluster import binaries
from controller.processes import free_port, pid_alive, terminate

SCRAPE_INTERVAL = "1s"
JOB = "seldon-pods"
STOP_GRACE = 5.0


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port``, its metrics path, the labels the scrape adds."""

    address: str
    path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)

    def group(self) -> dict[str, Any]:
        """Its ``file_sd`` entry (``__metrics_path__`` is per target, as relabelling sets it)."""
        return {"targets": [self.address],
                "labels": {**self.labels, "__metrics_path__": self.path}}


def config(root: Path, scrape_interval: str = SCRAPE_INTERVAL) -> str:
    """``prometheus.yml`` (JSON is YAML): one job fed by the ``file_sd`` files under
    ``root/targets``, re-read when they change (and every second regardless)."""
    return json.dumps({
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval,
                   "query_log_file": str(root / "queries.jsonl")},
        "scrape_configs": [{
            "job_name": JOB,
            "file_sd_configs": [{"files": [str(root / "targets" / "*.json")],
                                 "refresh_interval": scrape_interval}],
        }],
    }, indent=2)


def command(binary: str, root: Path, port: int) -> list[str]:
    """Loopback only, storage under ``root``, no lifecycle or admin API, no web UI assets
    needed (only the HTTP API is used)."""
    return [binary, f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}", "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    def __init__(self, root: Path, scrape_interval: str = SCRAPE_INTERVAL) -> None:
        self.root = root
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.pid = 0
        self._targets: dict[str, list[Target]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        """Start (or start again, same port and data) and wait until it answers ready."""
        if self.running():
            return self
        (self.root / "targets").mkdir(parents=True, exist_ok=True)
        (self.root / "prometheus.yml").write_text(config(self.root, self.scrape_interval))
        binary = str(binaries.ensure_prometheus())
        with open(self.root / "prometheus.log", "ab") as log:
            proc = subprocess.Popen(command(binary, self.root, self.port), cwd=self.root,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s:\n{self.tail()}")

    def running(self) -> bool:
        return pid_alive(self.pid)

    def stop(self) -> bool:
        """SIGTERM, SIGKILL after ``STOP_GRACE``; the data stays for ``start``."""
        stopped = terminate(self.pid, STOP_GRACE) if self.pid else False
        self.pid = 0
        return stopped

    def set_targets(self, name: str, targets: Iterable[Target]) -> None:
        """Replace the targets in ``targets/<name>.json`` (atomically: Prometheus watches
        the directory and must never read half a file)."""
        self._targets[name] = list(targets)
        directory = self.root / "targets"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.json.tmp"
        tmp.write_text(json.dumps([t.group() for t in self._targets[name]], indent=2))
        os.replace(tmp, directory / f"{name}.json")

    # ------------------------------------------------------------------ reading
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query (None: no series)."""
        rows = self.query(promql)
        if len(rows) > 1:
            raise PrometheusError(f"{promql} has {len(rows)} series, not one")
        return float(rows[0]["value"][1]) if rows else None

    def wait_value(self, promql: str, check, timeout: float = 30.0,
                   what: str = "") -> float | None:
        """Poll an instant query until ``check(value)`` holds (value None: no series)."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if check(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or promql} (last: {last})")

    def targets_up(self) -> dict[str, str]:
        """``address -> health`` of the active targets."""
        return {t["labels"]["instance"]: t["health"]
                for t in self.api("targets", state="active")["activeTargets"]}

    def wait_scraped(self, address: str, timeout: float = 30.0) -> None:
        """Until ``address`` has been scraped successfully (discovery takes ~5 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.targets_up().get(address) == "up":
                return
            time.sleep(0.2)
        raise AssertionError(f"{address} not scraped within {timeout:.0f}s: "
                             f"{self.targets_up()}")

    def queries(self) -> list[str]:
        """Every PromQL expression this server evaluated, in order (its query log)."""
        path = self.root / "queries.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line)["params"]["query"])
            except (ValueError, KeyError):
                continue
        return out

    def tail(self, lines: int = 20) -> str:
        path = self.root / "prometheus.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
