"""Detached child processes for the local serving backend: start, recognise, stop.

Serving processes must outlive the operator (a restart re-attaches to them), so they
run in their own session, and everything about them that matters is on disk: their pid
and port. A pid alone proves little after a reboot or pid reuse, so recognising a
process also checks its command line for the arguments we started it with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from controller.processes import pid_alive


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def is_ours(pid: int, expected: Sequence[str]) -> bool:
    """Alive and started with ``expected`` as a contiguous run of its arguments."""
    if not pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs: the health check has to do
    want = [a.encode() for a in expected]
    return any(args[i : i + len(want)] == want for i in range(len(args) - len(want) + 1))


async def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> int:
    """Start ``argv`` detached (own session, output to ``log_path``) and return its pid."""
    log = _open_log(log_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own copy
    return int(proc.pid)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")  # closed by spawn() once the child has its copy


def remove_logs(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def terminate(pid: int, expected: Sequence[str], grace_s: float = 15.0) -> None:
    """Stop a process group we started: SIGTERM (graceful), then SIGKILL after ``grace_s``.

    Only a process that is still ours (see :func:`is_ours`) and leads its own group is
    signalled, so a stale pid never hits a stranger.
    """
    if not is_ours(pid, expected):
        kill_remnants(pid, expected)
        return
    try:
        if os.getpgid(pid) != pid:
            return
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while loop.time() < deadline:
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # stragglers of the group (workers), or a hung leader


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")
_NOISE = ("can only join a child process",)  # multiprocessing atexit noise of 1.17.1 workers


def kill_remnants(pgid: int, expected: Sequence[str]) -> int:
    """SIGKILL what is left of a group whose leader died (a crash, an OOM kill).

    seldon-core 1.17.1's children (metrics server, multiprocessing manager, gunicorn
    workers, which only notice a dead master after half the 5000 s gunicorn timeout)
    outlive their leader. Only members whose command line is ours are touched, so a
    reused group number never hits a stranger. Returns how many were killed.
    """
    killed = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and is_ours(int(entry), expected):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def log_tail(path: Path, lines: int = 6, max_bytes: int = 16384) -> str:
    """Why a process stopped, for status: its last exception line, then its last lines."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    all_lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    errors = [
        line for line in all_lines if _ERROR_LINE.match(line) and not any(n in line for n in _NOISE)
    ]
    tail = all_lines[-lines:]
    if errors and errors[-1] not in tail:
        tail = [errors[-1], "...", *tail]
    return "\n".join(tail)


async def http_get(
    session: aiohttp.ClientSession, url: str, timeout_s: float = 2.0
) -> tuple[int, str]:
    """(status, body) of a GET, or (0, reason) when nothing answered in time."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.text()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def json_object(text: str) -> dict[str, Any]:
    """``text`` decoded as a JSON object, or {} for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
