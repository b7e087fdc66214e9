"""The router process of a local deployment: start or re-attach, configure, confirm.

Split from ``local.py``: the router is one plain process (no children), recognised by
its command line (config path and port), and confirms each config it applies by
reporting the file's sha256 as ``revision`` on ``/router/status``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp

from controller.processes import free_port
from controller.serving import procs
from controller.serving.local_state import RouterProc, State, save_state
from controller.serving.router_config import RouterConfig, config_bytes, write_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE = "router.json"
ROUTER_START_S = 20.0
REVISION_WAIT_S = 5.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


class RouterSupervisor:
    """Runs ``python -m controller.serving.router`` with the operator's interpreter."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def marker(self, directory: Path, port: int) -> list[str]:
        config = str(directory / CONFIG_FILE)
        return ["controller.serving.router", "--config", config, "--port", str(port)]

    async def health(
        self, session: aiohttp.ClientSession, directory: Path, state: State
    ) -> tuple[bool, str]:
        """This deployment's router answers: another process that took over the port
        (after a restart) would report another config path."""
        router = state.router
        if router is None:
            return False, "router not started"
        url = f"http://127.0.0.1:{router.port}/router/status"
        status, body = await procs.http_get(session, url)
        if status != 200:
            return False, f"router not answering: {body}"
        config = procs.json_object(body).get("config")
        if config != str(directory / CONFIG_FILE):
            return False, f"port {router.port} answers for another config ({config})"
        return True, ""

    async def ensure(
        self, session: aiohttp.ClientSession, directory: Path, state: State
    ) -> tuple[bool, str]:
        """Re-attach to the recorded router, or start one on the recorded port."""
        router = state.router
        log = directory / "logs" / "router.log"
        if router is not None and procs.is_ours(
            router.pid, self.marker(directory, router.port)
        ):
            deadline = router.started_at + ROUTER_START_S
            while True:
                ok, msg = await self.health(session, directory, state)
                if ok or time.time() >= deadline:
                    break
                await asyncio.sleep(0.2)
            if ok:
                return True, ""
            await procs.terminate(router.pid, self.marker(directory, router.port))
        if router is not None and procs.port_is_free(router.port):
            port = router.port
        else:
            port = free_port()
            if router is not None:
                logger.warning("router port %d taken; endpoint moves to %d", router.port, port)
        marker = self.marker(directory, port)
        argv = [str(self.python), "-m", *marker]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_REPO_ROOT), env.get("PYTHONPATH"))))
        pid = await procs.spawn(argv, env=env, cwd=directory, log_path=log)
        state.router = RouterProc(port, pid, time.time())
        save_state(directory, state)
        while True:
            ok, msg = await self.health(session, directory, state)
            if ok:
                return True, ""
            if not procs.is_ours(pid, marker):
                return False, f"router exited: {procs.log_tail(log)}"
            if time.time() >= state.router.started_at + ROUTER_START_S:
                return False, msg
            await asyncio.sleep(0.2)

    def write_config(self, directory: Path, config: RouterConfig) -> tuple[bool, str]:
        """Write the router config only when it changed (no churn in a steady state)."""
        data = config_bytes(config)
        revision = hashlib.sha256(data).hexdigest()
        path = directory / CONFIG_FILE
        if path.exists() and path.read_bytes() == data:
            return False, revision
        write_atomic(path, data)
        return True, revision

    async def await_revision(
        self,
        session: aiohttp.ClientSession,
        directory: Path,
        state: State,
        revision: str,
        nudge: bool,
    ) -> bool:
        """Wait until the router serves ``revision`` (SIGHUP makes it reload at once)."""
        assert state.router is not None
        marker = self.marker(directory, state.router.port)
        if nudge and procs.is_ours(state.router.pid, marker):
            os.kill(state.router.pid, signal.SIGHUP)
        url = f"http://127.0.0.1:{state.router.port}/router/status"
        deadline = time.monotonic() + REVISION_WAIT_S
        while time.monotonic() < deadline:
            status, body = await procs.http_get(session, url)
            if status == 200 and procs.json_object(body).get("revision") == revision:
                return True
            await asyncio.sleep(0.1)
        logger.warning("router on port %d has not applied config %s", state.router.port, revision)
        return False
