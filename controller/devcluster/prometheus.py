"""The dev cluster's Prometheus (``trellis dev-cluster up --prometheus``): Debian's 2.42
binary (``binaries.ensure_prometheus``), the metrics server the canary analysis queries.

It scrapes what the ``file_sd`` files under ``<root>/targets`` name, re-read every scrape
interval. Given the cluster's kubeconfig it also runs the pod discovery beside it
(``podtargets``: Debian's build has no Kubernetes service discovery), which keeps
``targets/pods.json`` to the model-server pods the PodMonitor Seldon documents would
select, so which pods are scraped, and under which labels, follows from the pods' own
labels and ports, not from whoever started them. Processes on this host (local-mode
model servers, the e2e tests') are registered by writing other files there.

Everything lives under ``<root>``: configuration, TSDB, logs, the query log (every PromQL
expression the server evaluated, which is how tests see the operator's queries) and the
record of the processes (``server.json``), so ``down`` finds them without the cluster's
state and ``start`` after ``stop`` comes back on the same port with the same data. It
listens on loopback only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.devcluster import binaries
from controller.processes import free_port, pid_alive, terminate

SCRAPE_INTERVAL = "1s"  # a dev cluster's few pods; the canary windows here are seconds long
JOB = "seldon-pods"
PODS_FILE = "pods.json"  # the discovery's, among the targets files
STOP_GRACE = 5.0


class PrometheusError(RuntimeError):
    pass


@dataclass
class PrometheusState:
    pid: int
    port: int
    started_at: float
    discovery_pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def config(root: Path, scrape_interval: str = SCRAPE_INTERVAL) -> str:
    """``prometheus.yml`` (JSON is YAML): one job fed by the ``file_sd`` files under
    ``root/targets``, re-read when they change (and every scrape interval regardless)."""
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
    """Loopback only, storage under ``root``, no lifecycle or admin API (only the HTTP
    query API is used)."""
    return [binary, f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}", "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]


class PrometheusServer:
    """One Prometheus process (and the pod discovery, given a kubeconfig) and its
    directory; see the module docstring."""

    def __init__(self, root: Path, *, kubeconfig: Path | None = None,
                 namespace_label: str = "namespace",
                 scrape_interval: str = SCRAPE_INTERVAL) -> None:
        self.root = root
        self.kubeconfig = kubeconfig
        self.namespace_label = namespace_label
        self.scrape_interval = scrape_interval
        self.record = root / "server.json"

    def state(self) -> PrometheusState | None:
        if not self.record.exists():
            return None
        return PrometheusState(**json.loads(self.record.read_text()))

    @property
    def url(self) -> str:
        st = self.state()
        if st is None:
            raise PrometheusError(f"no Prometheus started under {self.root}")
        return st.url

    def running(self) -> bool:
        st = self.state()
        return bool(st and pid_alive(st.pid)
                    and (self.kubeconfig is None or pid_alive(st.discovery_pid)))

    def start(self, timeout: float = 30.0) -> PrometheusState:
        """Start (again: same port, same data) and return once it answers ready."""
        st = self.state()
        if st and self.running():
            return st
        self.stop()  # a half that survived
        (self.root / "targets").mkdir(parents=True, exist_ok=True)
        (self.root / "prometheus.yml").write_text(config(self.root, self.scrape_interval))
        binary = str(binaries.ensure_prometheus())
        port = st.port if st else free_port()
        proc = self._spawn(command(binary, self.root, port), "prometheus.log")
        discovery = self._spawn(
            [sys.executable, "-m", "controller.devcluster.podtargets",
             f"--kubeconfig={self.kubeconfig}", f"--out={self.root / 'targets' / PODS_FILE}",
             f"--namespace-label={self.namespace_label}"],
            "discovery.log") if self.kubeconfig is not None else None
        st = PrometheusState(pid=proc.pid, port=port, started_at=time.time(),
                             discovery_pid=discovery.pid if discovery else 0)
        self.record.write_text(json.dumps(asdict(st)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child, name in ((proc, "prometheus"), (discovery, "discovery")):
                if child is not None and child.poll() is not None:
                    self.stop()
                    raise PrometheusError(f"{name} exited ({child.returncode}):\n"
                                          + self.tail(f"{name}.log"))
            try:
                with urllib.request.urlopen(f"{st.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return st
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> bool:
        """SIGTERM, SIGKILL after ``STOP_GRACE``; port and data stay for ``start``."""
        st = self.state()
        if st is None:
            return False
        stopped = False
        for pid in (st.discovery_pid, st.pid):
            stopped |= terminate(pid, STOP_GRACE) if pid else False
        self.record.write_text(json.dumps({**asdict(st), "pid": 0, "discovery_pid": 0}))
        return stopped

    def tail(self, name: str = "prometheus.log", lines: int = 20) -> str:
        path = self.root / name
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.root / log_name, "ab") as log:
            return subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
