"""Faults the harness can deal the control plane: a kube-apiserver SIGKILLed and started
again with the same command line, and etcd stopped for a while (the operator's own
SIGKILL is ``OperatorProcess.kill``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from controller.devcluster.cluster import DevCluster
from controller.processes import pid_alive


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _kill_and_reap(pid: int, sig: int, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours when this process started the cluster
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not exit after signal {sig}")


def _respawn(dev: DevCluster, cmd: list[str], log_name: str) -> int:
    with open(dev.dir / log_name, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _set_pid(dev: DevCluster, **pids: int) -> None:
    data = json.loads(dev.state_file.read_text())
    data.update(pids)
    dev.state_file.write_text(json.dumps(data, indent=2))


def _supervise(dev: DevCluster, cmd: list[str], log_name: str, key: str,
               timeout: float = 90.0) -> None:
    """Start ``cmd`` and restart it while it exits early, as a supervisor (systemd, the
    kubelet) would: a client reconnecting in a loop can hold the freed port for a moment
    (an ephemeral source port, even a TCP self-connect), and the server then exits with
    "bind: address already in use"."""
    deadline = time.monotonic() + timeout
    while True:
        pid = _respawn(dev, cmd, log_name)
        _set_pid(dev, **{key: pid})
        while pid_alive(pid) and not dev.running() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if dev.running():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dev cluster is not ready {timeout:.0f}s after the fault")
        time.sleep(0.5)  # it exited: start it again


def restart_apiserver(dev: DevCluster) -> None:
    """SIGKILL the kube-apiserver and start it again with the same command line (same
    port, same etcd): every watch and connection of the operator breaks at once."""
    st = dev.state()
    assert st is not None
    cmd = _cmdline(st.apiserver_pid)
    _kill_and_reap(st.apiserver_pid, signal.SIGKILL)
    _supervise(dev, cmd, "apiserver.log", "apiserver_pid")


def etcd_outage(dev: DevCluster, seconds: float = 10.0) -> None:
    """Stop etcd (SIGTERM, its data kept), keep it down ``seconds``, start it again with
    the same command line: the API server answers 5xx/timeouts meanwhile."""
    st = dev.state()
    assert st is not None
    cmd = _cmdline(st.etcd_pid)
    started = time.monotonic()
    _kill_and_reap(st.etcd_pid, signal.SIGTERM)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    _supervise(dev, cmd, "etcd.log", "etcd_pid")


