"""Stopping what a demo run left behind, even one that was killed with -9.

Local serving and training processes are detached on purpose (they survive operator
restarts), so the demo finds them by what they carry: the demo's state directory in
their command line or environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from controller.processes import pid_alive


def _mentions(pid: int, needle: bytes) -> bool:
    for part in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


def find(state_dir: Path) -> list[int]:
    needle = str(state_dir.resolve()).encode()
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and _mentions(int(entry.name), needle):
            pids.append(int(entry.name))
    return pids


def reap(state_dir: Path, grace: float = 10.0) -> int:
    """SIGTERM every process of this state directory, SIGKILL the ones that linger."""
    pids = find(state_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return len(pids)
