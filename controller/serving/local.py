"""The local serving backend: seldon-core microservices on loopback behind one router.

Per ModelDeployment it runs one ``seldon-core-microservice`` per predictor (from the
separate serving environment) and one router (``controller.serving.router``) whose port
is the deployment's endpoint. All are detached and recorded in
``<state_dir>/<namespace>/<name>/state.json``, so a restarted operator re-attaches to
them (pid alive, command line ours, health endpoint answering) instead of starting
duplicates, and the router keeps its port, so the endpoint on status never moves.

A predictor whose version changes gets a new process; the router keeps sending that
predictor's traffic to the old one until the new one is healthy, then switches (an atomic
config rewrite the router confirms by revision) and only then is the old one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from controller.processes import free_port
from controller.serving import procs
from controller.serving.local_router import RouterSupervisor
from controller.serving.local_state import (
    STATE_FILE,
    DesiredServing,
    PredictorSpec,
    PredictorState,
    Proc,
    ServingError,
    ServingObserved,
    State,
    env_hash,
    load_state,
    save_state,
    server_env,
)
from controller.serving.router_config import (
    ConfigError,
    Predictor,
    RouterConfig,
    parse_config,
    write_atomic,
)

__all__ = [
    "DesiredServing",
    "LocalServingBackend",
    "PredictorSpec",
    "PredictorState",
    "ServingError",
    "ServingObserved",
]

logger = logging.getLogger(__name__)

MODEL_CLASS = "PumpkinModel"
TOKEN_FILE = "auth-token"


class LocalServingBackend:
    """Serving backend for ``backend: local``; see the module docstring.

    ``serving_python`` is the serving environment's interpreter (its
    ``seldon-core-microservice`` script sits next to it); ``serving_dir`` holds
    ``PumpkinModel.py``. ``start_timeout_s`` bounds how long a new model server may take
    to become healthy before it is reported unhealthy.
    """

    def __init__(
        self,
        state_dir: Path,
        serving_python: Path,
        serving_dir: Path,
        *,
        start_timeout_s: float = 90.0,
        operator_python: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.serving_python = Path(serving_python)
        self.serving_dir = Path(serving_dir)
        self.start_timeout_s = start_timeout_s
        self.router = RouterSupervisor(Path(operator_python or sys.executable))
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ---- interface -----------------------------------------------------------------

    async def ensure(self, desired: DesiredServing) -> ServingObserved:
        """Converge the processes and the router config on ``desired`` (idempotent)."""
        async with self._lock(desired.namespace, desired.name):
            return await self._ensure(desired)

    async def observe(self, namespace: str, name: str) -> ServingObserved | None:
        """What runs for the deployment now, without changing anything (None: nothing)."""
        directory = self._dir(namespace, name)
        if not (directory / STATE_FILE).exists():
            return None
        state = load_state(directory)
        async with aiohttp.ClientSession() as session:
            router_ok, router_msg = await self.router.health(session, directory, state)
            checks = await asyncio.gather(
                *(self._health(session, p, wait=False) for p in state.predictors.values())
            )
        predictors = {
            p.name: PredictorState(p.version, p.port, p.pid, ok, msg)
            for p, (ok, msg) in zip(state.predictors.values(), checks, strict=True)
        }
        ready = router_ok and all(p.healthy for p in predictors.values())
        return self._observed(state, predictors, ready, router_msg)

    async def teardown(self, namespace: str, name: str, *, forget: bool = True) -> None:
        """Stop the router first (no traffic to dying predictors), then every predictor;
        then remove the deployment's directory, unless ``forget`` is off (its logs kept
        for a post-mortem)."""
        async with self._lock(namespace, name):
            directory = self._dir(namespace, name)
            if not (directory / STATE_FILE).exists():
                return
            state = load_state(directory)
            if state.router is not None:
                marker = self.router.marker(directory, state.router.port)
                await procs.terminate(state.router.pid, marker)
            stopping = [*state.predictors.values(), *state.retiring]
            await asyncio.gather(*(procs.terminate(p.pid, p.marker) for p in stopping))
            _remove_tmp(*stopping)
            if forget:
                await asyncio.to_thread(shutil.rmtree, directory, True)

    # ---- convergence ---------------------------------------------------------------

    async def _ensure(self, desired: DesiredServing) -> ServingObserved:
        _validate(desired)
        directory = self._dir(desired.namespace, desired.name)
        directory.mkdir(parents=True, exist_ok=True)
        state = load_state(directory)
        token_path = self._sync_token(directory, desired.auth_token)
        notes = await self._converge_servers(directory, desired, state)

        async with aiohttp.ClientSession() as session:
            checks = await asyncio.gather(
                *(self._health(session, state.predictors[s.name]) for s in desired.predictors)
            )
            health = {s.name: c for s, c in zip(desired.predictors, checks, strict=True)}
            entries = []
            for spec in desired.predictors:
                proc, (ok, msg) = state.predictors[spec.name], health[spec.name]
                old = None if ok else await self._serving_old(session, state, spec.name)
                if ok:
                    entries.append(Predictor(spec.name, spec.version, proc.url, spec.weight))
                elif old is not None:
                    entries.append(Predictor(spec.name, old.version, old.url, spec.weight))
                    waiting = f"v{old.version} serves until v{spec.version} is healthy: {msg}"
                    health[spec.name] = (False, waiting)
                else:
                    entries.append(Predictor(spec.name, spec.version, proc.url, 0))
            config = RouterConfig(
                deployment=f"{desired.namespace}/{desired.name}",
                predictors=tuple(entries),
                log_dir=desired.log_dir,
                max_log_bytes=desired.max_log_bytes if desired.log_dir else 0,
                auth_token_file=token_path,
                max_body_bytes=desired.max_body_bytes,
            )
            changed, revision = self.router.write_config(directory, config)
            router_ok, router_msg = await self.router.ensure(session, directory, state)
            applied = router_ok and await self.router.await_revision(
                session, directory, state, revision, nudge=changed
            )
            if applied or not router_ok:
                await self._stop_unreferenced(state, {e.url for e in entries})
            save_state(directory, state)

        predictors = {}
        for spec in desired.predictors:
            proc, (ok, msg) = state.predictors[spec.name], health[spec.name]
            message = "; ".join(filter(None, (msg, notes.get(spec.name, ""))))
            predictors[spec.name] = PredictorState(spec.version, proc.port, proc.pid, ok, message)
        ready = router_ok and applied and all(ok for ok, _ in health.values())
        return self._observed(state, predictors, ready, router_msg)

    async def _converge_servers(
        self, directory: Path, desired: DesiredServing, state: State
    ) -> dict[str, str]:
        """One live server per desired predictor; replaced ones go to ``retiring``.

        A recorded server is trusted only while it is ours (pid alive, our command line)
        and, once past its start-up grace, answers a liveness ping; otherwise it is
        restarted, and the returned note says why.
        """
        notes: dict[str, str] = {}
        wanted = {spec.name for spec in desired.predictors}
        for name in [n for n in state.predictors if n not in wanted]:
            state.retiring.append(state.predictors.pop(name))
        async with aiohttp.ClientSession() as session:
            for spec in desired.predictors:
                current = state.predictors.get(spec.name)
                if current is not None and procs.is_ours(current.pid, current.marker):
                    if not current.matches(spec):
                        state.retiring.append(current)
                    elif await self._alive(session, current):
                        continue
                    else:
                        notes[spec.name] = f"v{current.version} stopped answering; restarted"
                        await procs.terminate(current.pid, current.marker, grace_s=5)
                        _remove_tmp(current)
                elif current is not None:
                    tail = procs.log_tail(Path(current.log), lines=5)
                    notes[spec.name] = f"v{current.version} had exited and was restarted: {tail}"
                    procs.kill_remnants(current.pid, current.marker)
                    _remove_tmp(current)
                state.predictors[spec.name] = _adopt(state, spec) or await self._start_predictor(
                    directory, desired, spec
                )
                save_state(directory, state)  # recorded before any wait: no orphan on a crash
        save_state(directory, state)
        return notes

    async def _alive(self, session: aiohttp.ClientSession, proc: Proc) -> bool:
        """Liveness: inside its start-up grace, or answering /health/ping (generously:
        a single-threaded server answers after the predictions queued before the ping)."""
        if time.time() < proc.started_at + self.start_timeout_s:
            return True
        status, _ = await procs.http_get(session, f"{proc.url}/health/ping", timeout_s=10.0)
        return status == 200

    async def _start_predictor(
        self, directory: Path, desired: DesiredServing, spec: PredictorSpec
    ) -> Proc:
        script = self.serving_python.parent / "seldon-core-microservice"
        if not script.exists():
            raise ServingError(
                f"{script} not found: create the serving environment from serving/requirements.lock"
            )
        port, metrics_port = free_port(), free_port()
        while metrics_port == port:
            metrics_port = free_port()
        log = directory / "logs" / f"{spec.name}-v{spec.version}-{port}.log"
        argv = [
            *(str(script), MODEL_CLASS, "--service-type", "MODEL"),
            *("--http-port", str(port), "--metrics-port", str(metrics_port)),
            *("--grpc-workers", "0"),  # 1.17.1 would start gRPC on 5000 for every server
        ]
        instance = uuid.uuid4().hex
        env = server_env(desired, spec, self.serving_dir, instance)
        env["TMPDIR"] = tmpdir = tempfile.mkdtemp(prefix=f"trellis-{spec.name}-")
        try:
            pid = await procs.spawn(argv, env=env, cwd=self.serving_dir, log_path=log)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        logger.info("started %s v%d on port %d (pid %d)", spec.name, spec.version, port, pid)
        return Proc(
            *(spec.name, spec.version, spec.model_uri, env_hash(spec.env)),
            *(port, metrics_port, pid, time.time(), str(log), instance, tmpdir),
        )

    async def _health(
        self, session: aiohttp.ClientSession, proc: Proc, wait: bool = True
    ) -> tuple[bool, str]:
        """Healthy = ours, alive, and its /health/status says 200 for the right version.

        With ``wait``, a process still inside its start-up grace is polled until it gets
        there, dies, or the grace ends.
        """
        deadline = proc.started_at + self.start_timeout_s
        while True:
            if not procs.is_ours(proc.pid, proc.marker):
                return False, f"exited: {procs.log_tail(Path(proc.log))}"
            status, body = await procs.http_get(session, f"{proc.url}/health/status", 5.0)
            if status == 200:
                answer = procs.json_object(body).get("jsonData", {})
                if answer.get("version") == proc.version and (
                    answer.get("instance") == proc.instance or not proc.instance
                ):
                    return True, ""
                return False, f"port {proc.port} is answered by another server: {answer}"
            if not wait or time.time() >= deadline:
                since = time.time() - proc.started_at
                return False, f"not healthy {since:.0f}s after start: {status or body}"
            await asyncio.sleep(0.25)

    async def _serving_old(
        self, session: aiohttp.ClientSession, state: State, name: str
    ) -> Proc | None:
        for old in reversed(state.retiring):
            if old.name == name and (await self._health(session, old, wait=False))[0]:
                return old
        return None

    async def _stop_unreferenced(self, state: State, routed: set[str]) -> None:
        keep, stop = [], []
        for proc in state.retiring:
            (keep if proc.url in routed and procs.pid_alive(proc.pid) else stop).append(proc)
        await asyncio.gather(*(procs.terminate(p.pid, p.marker) for p in stop))
        procs.remove_logs([Path(p.log) for p in stop])
        _remove_tmp(*stop)
        for proc in stop:
            logger.info("stopped %s v%d (pid %d)", proc.name, proc.version, proc.pid)
        state.retiring = keep

    # ---- files -----------------------------------------------------------------------

    def _dir(self, namespace: str, name: str) -> Path:
        return self.state_dir / namespace / name

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def _sync_token(self, directory: Path, token: str | None) -> Path | None:
        """Keep the token in a 0600 file the router re-reads; never in logs or state."""
        path = directory / TOKEN_FILE
        if token is None:
            path.unlink(missing_ok=True)
            return None
        if not path.exists() or path.read_text(encoding="utf-8") != token:
            write_atomic(path, token.encode(), mode=0o600)
        return path

    def _observed(
        self, state: State, predictors: dict[str, PredictorState], ready: bool, message: str
    ) -> ServingObserved:
        endpoint = f"http://127.0.0.1:{state.router.port}" if state.router else ""
        return ServingObserved(endpoint, ready, predictors, message)


def _validate(desired: DesiredServing) -> None:
    """Refuse what the router would refuse, before any process is started for it."""
    predictors = tuple(
        Predictor(p.name, p.version, "http://127.0.0.1:1", p.weight) for p in desired.predictors
    )
    config = RouterConfig(
        deployment=f"{desired.namespace}/{desired.name}",
        predictors=predictors,
        log_dir=desired.log_dir,
        max_log_bytes=desired.max_log_bytes if desired.log_dir else 0,
        max_body_bytes=desired.max_body_bytes,
    )
    try:
        parse_config(config.to_json())
    except ConfigError as exc:
        raise ServingError(f"cannot serve {config.deployment}: {exc}") from exc


def _remove_tmp(*stopped: Proc) -> None:
    """The TMPDIR of stopped servers: seldon-core's multiprocessing manager, killed with
    its group, leaves its ``pymp-*`` socket directory behind in it."""
    for proc in stopped:
        if proc.tmpdir:
            shutil.rmtree(proc.tmpdir, ignore_errors=True)


def _adopt(state: State, spec: PredictorSpec) -> Proc | None:
    """A retiring server that already runs what ``spec`` wants (a promoted canary)."""
    for i, proc in enumerate(state.retiring):
        if proc.matches(spec) and procs.is_ours(proc.pid, proc.marker):
            del state.retiring[i]
            proc.name = spec.name
            return proc
    return None
