"""Process liveness, stopping with a deadline and free loopback ports, as every part that
starts processes needs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie, dead but unreaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def terminate(pid: int, timeout: float, *, group: bool = True) -> bool:
    """SIGTERM (its process group with ``group``), then SIGKILL after ``timeout``: some
    servers ignore TERM for long (containerd mid-import, weed flushing its filer). True
    if it was running."""
    if not pid_alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        _signal(pid, sig, group)
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # ours when this process started it
            if not pid_alive(pid):
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    return True


def _signal(pid: int, sig: int, group: bool) -> None:
    if group:
        try:
            os.killpg(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass  # not a group leader: the process alone
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
