"""Local-mode work (serving and training processes): found, recorded and stopped.

The local backends start their processes detached on purpose: a model server, a router
or a training run outlives the operator, so that a restarted operator re-attaches
instead of starting duplicates. Stopping the operator therefore stops none of them;
whoever ends their world must. That is a ModelDeployment's or Experiment's deletion
(the backends' own teardown, through the finalizers), ``trellis dev-cluster down`` for
the operators that used that cluster, and the tests' fixtures for their operators.

:func:`stop` does it for one state directory: the serving backend's teardown of every
deployment recorded there, the training backend's cancel of every run still going, then
a sweep for anything else that still works in that directory. Which state directories
were used against which cluster is recorded by the operator when it starts
(:func:`record`, one small file per state directory in ``Settings.registry_dir``), so
the record survives an operator restart and ``trellis dev-cluster down`` can read it
with no operator running.

:func:`find` is the process scan shared by that sweep, by :func:`reap` (the demo's
"leave nothing of a previous run") and by the tests' leftover checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.processes import pid_alive

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------- records
def cluster_id(ca_file: str | Path | None, server: str) -> str:
    """Who a cluster is: the digest of its CA certificate (a dev cluster makes its own,
    kept in its directory), else its URL. Ports get reused; CAs do not."""
    if ca_file:
        with contextlib.suppress(OSError):
            return "ca-sha256:" + hashlib.sha256(Path(ca_file).read_bytes()).hexdigest()
    return f"url:{server}"


def record(registry: Path, state_dir: Path, cluster: str) -> Path:
    """Note that an operator works in ``state_dir`` against ``cluster`` (idempotent: one
    record per state directory, the latest cluster wins)."""
    state_dir = state_dir.resolve()
    path = registry / f"{hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]}.json"
    registry.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"stateDir": str(state_dir), "cluster": cluster,
                               "pid": os.getpid(), "recordedAt": time.time()}))
    os.replace(tmp, path)
    return path


def recorded(registry: Path, cluster: str) -> list[tuple[Path, Path]]:
    """(record, state directory) for every state directory recorded against ``cluster``."""
    found = []
    for path in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("cluster") == cluster and doc.get("stateDir"):
            found.append((path, Path(doc["stateDir"])))
    return found


def stop_for_cluster(registry: Path, cluster: str, grace_s: float = 10.0) -> int:
    """:func:`stop` every state directory recorded against ``cluster``, then forget it;
    returns how many processes were stopped."""
    stopped = 0
    for path, state_dir in recorded(registry, cluster):
        procs = stop(state_dir, grace_s)
        if procs:
            log.info("stopped %d local-mode process(es) of %s", len(procs), state_dir)
        stopped += len(procs)
        path.unlink(missing_ok=True)
    return stopped


# ------------------------------------------------------------------------- stop
def stop(state_dir: Path, grace_s: float = 10.0) -> list[Process]:
    """Stop every local-mode process working in ``state_dir``; returns what was running.

    First as the backends would on deletion (router before its predictors; a run
    recorded as cancelled), keeping every file: the logs tell why a test failed, and a
    later operator finds the processes gone and starts new ones. Then a sweep: sessions
    led by a process whose command line, working directory or open files lie in
    ``state_dir`` (every local-mode process is started in a session of its own). An
    operator started from a shell is in its shell's session, so an operator still
    running is never hit; the caller's own process and its ancestors never are.
    """
    from controller.settings import Settings

    state_dir = Path(state_dir).resolve()
    if not state_dir.is_dir():
        return []
    running = _workers(state_dir)
    _run(_stop_backends(Settings(state_dir=state_dir)))
    terminate(_workers(state_dir), grace_s)
    return running


def reap(root: Path, grace_s: float = 10.0) -> list[Process]:
    """Stop everything that references ``root`` at all, environment included: for a
    directory that is wholly one run's (the demo's), operator and all."""
    found = find([root], environ=True)
    terminate(found, grace_s)
    return found


def _workers(state_dir: Path) -> list[Process]:
    """Members of sessions whose leader works in ``state_dir``, and members of sessions
    whose leader is gone (what a crashed model server's workers are)."""
    procs = find([state_dir])
    leaders = {p.pid for p in procs if p.pid == p.sid}
    # The caller's own session is never a worker's, even when its leader is gone (a CI
    # runner's, a closed terminal's): an operator started alongside the caller lives there.
    own = os.getsid(0)
    return [p for p in procs
            if p.sid in leaders or (p.sid != own and not pid_alive(p.sid))]


async def _stop_backends(settings: Any) -> None:
    from controller.paths import SERVING_DIR
    from controller.serving.local import LocalServingBackend
    from controller.serving.local_state import STATE_FILE, ServingError
    from controller.training.launcher import read_json
    from controller.training.local import LocalTrainingBackend, RunRef

    serving = LocalServingBackend(settings.serving_state_dir, settings.serving_python,
                                  SERVING_DIR)
    for state_file in sorted(settings.serving_state_dir.glob(f"*/*/{STATE_FILE}")):
        try:
            await serving.teardown(state_file.parent.parent.name, state_file.parent.name,
                                   forget=False)
        except ServingError as exc:  # an unreadable record: the sweep finds its processes
            log.warning("%s", exc)
    training = LocalTrainingBackend(settings.datastore_root)
    for entry in sorted(training.index_dir.glob("*.json")):
        workdir = read_json(entry).get("workdir")
        if not workdir or read_json(Path(workdir) / "result.json"):
            continue
        ref = RunRef(None, None, workdir)
        if (await training.observe(ref)).state in ("starting", "running"):
            await training.cancel(ref)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that also works when called from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ------------------------------------------------------------------------- find
@dataclass(frozen=True)
class Process:
    pid: int
    sid: int  # session id: the pid of the session's leader
    args: tuple[str, ...]

    def __str__(self) -> str:
        line = " ".join(self.args)
        return f"pid {self.pid}: {line[:200]}{'...' if len(line) > 200 else ''}"


def find(roots: Sequence[Path], *, environ: bool = False) -> list[Process]:
    """Live processes whose command line, working directory or open files (with
    ``environ``, also environment) reference a path in or equal to one of ``roots``.

    Never the calling process or its ancestors; processes of other users are not
    readable and so never found. Linux only (it reads /proc), as local mode is.
    """
    needles = [str(Path(r).resolve()) for r in roots]
    skip = {os.getpid(), *_ancestors()}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if stat is None or stat[0] in "ZX" or not cmdline:  # gone, zombie, kernel thread
            continue
        if _references(pid, cmdline, needles, environ):
            args = tuple(a.decode(errors="replace") for a in cmdline.rstrip(b"\0").split(b"\0"))
            found.append(Process(pid, stat[2], args))
    return found


def terminate(procs: Iterable[Process], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace_s``. Each process is
    signalled only while it still carries the command line it was found with."""
    procs = list(procs)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if _same(p)]
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _same(p)]
            time.sleep(0.1)


def _references(pid: int, cmdline: bytes, needles: list[str], environ: bool) -> bool:
    blobs = [b"\0" + cmdline]
    if environ:
        with contextlib.suppress(OSError):
            blobs.append(b"\0" + Path(f"/proc/{pid}/environ").read_bytes())
    for needle in needles:
        raw = needle.encode()
        # a whole path or a path below it: /tmp/p-1 must not match /tmp/p-12
        if any(raw + end in blob + b"\0" for blob in blobs for end in (b"/", b"\0", b":")):
            return True
    paths = []
    with contextlib.suppress(OSError):
        paths.append(os.readlink(f"/proc/{pid}/cwd"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return any(_under(p.removesuffix(" (deleted)"), n) for p in paths for n in needles)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3])


def _ancestors() -> set[int]:
    out, pid = set(), os.getppid()
    while pid > 1 and pid not in out:
        out.add(pid)
        stat = _stat(pid)
        pid = stat[1] if stat else 0
    return out


def _same(p: Process) -> bool:
    if not pid_alive(p.pid):
        return False
    try:
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return tuple(a.decode(errors="replace") for a in cmdline.rstrip(b"\0").split(b"\0")) == p.args
