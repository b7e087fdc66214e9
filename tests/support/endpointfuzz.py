"""Endpoint fuzzing: generated requests against the local router and the model server.

The servers are the real ones, on loopback: a local deployment started by
``LocalServingBackend`` (a ``seldon-core-microservice`` running ``serving/PumpkinModel.py``
from ``.venv-serving`` behind ``controller.serving.router``, with bearer auth and a
request log), exactly as the operator starts them.

Each case is one request to the router's or the model server's prediction or feedback
endpoint, drawn by ``tests/support/endpointgen.py``'s seeded generator (JSON shapes,
numbers, nesting, sizes, text encodings, content types and encodings, methods, queries,
Authorization headers, and raw requests whose HTTP framing is broken).

The properties, checked per case: no 5xx (malformed input is a 4xx before a model sees
it), the next good request answered 200, and at the end every server process still the
one that started (no crash, no restarted worker).

``tests/e2e/test_endpoint_fuzz.py`` runs a fixed-seed slice; ``bench/fuzz_bench.py`` the
full run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.paths import ROOT
from tests.support.endpointgen import (
    FEEDBACK_PATHS,
    MAX_BODY_BYTES,
    TOKEN,
    Case,
    Generator,
)

SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
TIMEOUT_S = 30.0
ABORT_AFTER = 5  # failed good requests before a run stops (each may wait TIMEOUT_S)
# gunicorn's limit_request_line: past it the model server answers 400 and closes, and a
# long line's unread rest resets the connection first (the client may see no answer).
GUNICORN_REQUEST_LINE = 4094
RAW_WAIT_S = 2.0  # how long a raw request waits for an answer before it half-closes


# ------------------------------------------------------------------------- servers
@dataclass
class Servers:
    router: str  # base URLs
    model: str
    router_pid: int
    model_pid: int

    def address(self, target: str) -> tuple[str, int]:
        url = urllib.parse.urlsplit(self.router if target == "router" else self.model)
        return url.hostname or "127.0.0.1", url.port or 80

    def processes(self) -> dict[str, list[int]]:
        """Each server's process and its children (gunicorn's workers), for crash checks."""
        return {"router": _tree(self.router_pid), "model": _tree(self.model_pid)}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (empty when ``pid`` is gone)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    if pid not in parents:
        return []
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return sorted(found)


@contextmanager
def serving(root: Path) -> Iterator[Servers]:
    """One local deployment (router + one model server) for the fuzz; torn down after."""
    from controller.serving.local import DesiredServing, LocalServingBackend, PredictorSpec
    from tests.support.fake_model import write_model_version

    model_dir = write_model_version(root / "models" / "1")
    backend = LocalServingBackend(root / "state", SERVING_PYTHON, ROOT / "serving",
                                  start_timeout_s=120)
    desired = DesiredServing(
        "fuzz", "endpoints", [PredictorSpec("stable", 1, model_dir.as_uri(), 100)],
        log_dir=root / "log", max_log_bytes=64 * 1024 * 1024, auth_token=TOKEN,
        max_body_bytes=MAX_BODY_BYTES)
    # One event loop from start to teardown: asyncio's child watcher reports each server
    # process's exit to the loop that started it, which must still be open then.
    with asyncio.Runner() as loop:
        try:
            observed = loop.run(backend.ensure(desired))
            if not observed.ready:
                raise RuntimeError(f"the fuzz deployment did not become ready: {observed}")
            state = json.loads((root / "state" / "fuzz" / "endpoints" / "state.json")
                               .read_text())
            stable = observed.predictors["stable"]
            yield Servers(observed.endpoint, f"http://127.0.0.1:{stable.port}",
                          state["router"]["pid"], stable.pid)
        finally:
            loop.run(backend.teardown("fuzz", "endpoints"))


# ------------------------------------------------------------------------ sending
@dataclass
class Answer:
    status: int | None  # None: no answer (connection closed) or a timeout
    detail: str = ""
    body: bytes = b""


class Client:
    """Keep-alive connections per target; broken framing goes out on its own socket."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def _conn(self, target: str) -> http.client.HTTPConnection:
        conn = self.conns.get(target)
        if conn is None:
            host, port = self.servers.address(target)
            conn = self.conns[target] = http.client.HTTPConnection(host, port,
                                                                   timeout=TIMEOUT_S)
        return conn

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def send(self, case: Case) -> Answer:
        if case.raw is not None:
            return self._send_raw(case)
        for attempt in (1, 2):
            conn = self._conn(case.target)
            try:
                conn.putrequest(case.method, case.path, skip_accept_encoding=True)
                for key, value in case.headers:
                    conn.putheader(key, value.encode("latin-1", "replace"))
                if case.chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders()
                    for i in range(0, len(case.body), 7000):
                        piece = case.body[i:i + 7000]
                        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    conn.send(b"0\r\n\r\n")
                else:
                    if case.body or case.method in ("POST", "PUT", "PATCH"):
                        conn.putheader("Content-Length", str(len(case.body)))
                    conn.endheaders(case.body or None)
                resp = conn.getresponse()
                body = resp.read() if case.method != "HEAD" else b""
                if resp.will_close:
                    self._drop(case.target)
                return Answer(resp.status, body=body[:4000])
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._drop(case.target)
                if attempt == 2 or isinstance(exc, TimeoutError):
                    return Answer(None, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _drop(self, target: str) -> None:
        conn = self.conns.pop(target, None)
        if conn is not None:
            conn.close()

    def _send_raw(self, case: Case) -> Answer:
        """Send the bytes and read the answer; a server still waiting for the rest of a
        body after a while gets the end of the stream (half-close), then answers or not."""
        assert case.raw is not None
        host, port = self.servers.address(case.target)
        with socket.create_connection((host, port), timeout=RAW_WAIT_S) as sock:
            data = b""
            try:
                sock.sendall(case.raw)
                try:
                    data = _read_all(sock)
                except TimeoutError:
                    sock.shutdown(socket.SHUT_WR)  # a cut-off body ends here
                    data = _read_all(sock)
            except (TimeoutError, ConnectionError, OSError) as exc:
                if not data:
                    return Answer(None, f"{type(exc).__name__}: {exc}")
        if not data.startswith(b"HTTP/"):
            return Answer(None, "closed without an answer" if not data else repr(data[:100]))
        try:
            status = int(data.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return Answer(None, repr(data[:100]))
        return Answer(status, body=data[:2000])


def _read_all(sock: socket.socket) -> bytes:
    """Until the server closes, or (once an answer has begun) a pause: keep-alive servers
    leave the connection open after answering."""
    data = b""
    while len(data) < 65536:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if data:
                return data
            raise
        if not chunk:
            break
        data += chunk
        sock.settimeout(0.2)
    return data


# ------------------------------------------------------------------------- oracle
def good_prediction(gen: Generator, target: str) -> Case:
    headers = [("Content-Type", "application/json")]
    if target == "router":
        headers.append(("Authorization", f"Bearer {TOKEN}"))
    body = json.dumps({"data": {"ndarray": [gen.good]}}).encode()
    return Case(-1, target, "predictions", "good prediction", headers=headers, body=body)


def good_feedback(puid: str) -> Case:
    headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {TOKEN}")]
    body = json.dumps({"puid": puid, "label": 1}).encode()
    return Case(-1, "router", "feedback", "good feedback", path=FEEDBACK_PATHS[0],
                headers=headers, body=body)


def _puid(body: bytes) -> str | None:
    try:
        puid = json.loads(body)["meta"]["puid"]
    except (ValueError, KeyError, TypeError):
        return None
    return puid if isinstance(puid, str) else None


@dataclass
class Outcome:
    cases: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx answers to fuzz cases
    good_failures: list[str] = field(default_factory=list)  # the next good request failed
    no_answer: list[str] = field(default_factory=list)  # well-formed HTTP left unanswered
    closed: int = 0  # refused by closing: broken framing, or a request line past the limit
    crashes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "by_target": dict(self.by_target),
                "statuses": dict(sorted(self.statuses.items())),
                "5xx": len(self.server_errors), "good_failures": len(self.good_failures),
                "no_answer": len(self.no_answer), "closed": self.closed,
                "crashes": len(self.crashes),
                "seconds": round(self.seconds, 1)}


def run(servers: Servers, count: int, seed: int, *,
        progress: Callable[[int], None] | None = None) -> Outcome:
    """``count`` fuzz cases, each followed by a good prediction to the same server."""
    out = Outcome()
    client = Client(servers)
    puids: list[str] = []
    gen = Generator(seed, puids)
    before = servers.processes()
    started = time.monotonic()
    try:
        for index in range(count):
            case = gen.case(index)
            answer = client.send(case)
            out.cases += 1
            out.by_target[f"{case.target} {case.endpoint}"] += 1
            out.statuses[str(answer.status or "none")] += 1
            where = f"case {index} [{case.target} {case.method} {case.path[:60]}] {case.what}"
            if answer.status is not None and answer.status >= 500:
                out.server_errors.append(f"{where}: HTTP {answer.status} "
                                         f"{answer.body[:300]!r}")
            elif answer.status is None and (case.raw is not None or (
                    case.target == "model"
                    and len(case.method) + len(case.path) + 10 > GUNICORN_REQUEST_LINE)):
                out.closed += 1
            elif answer.status is None:
                out.no_answer.append(f"{where}: {answer.detail}")
            good = client.send(good_prediction(gen, case.target))
            if good.status != 200:
                out.good_failures.append(f"after {where}: HTTP {good.status} {good.detail} "
                                         f"{good.body[:300]!r}")
                if len(out.good_failures) >= ABORT_AFTER:  # a server is down or stuck
                    out.crashes.append(f"aborted after case {index}: {ABORT_AFTER} good "
                                       "requests failed")
                    break
            elif case.target == "router":
                puid = _puid(good.body)
                if puid:
                    puids.append(puid)
                    del puids[:-10]
            if index % 50 == 49 and puids:
                fb = client.send(good_feedback(puids[-1]))
                if fb.status != 200:
                    out.good_failures.append(f"feedback after case {index}: HTTP {fb.status}"
                                             f" {fb.detail} {fb.body[:300]!r}")
            if progress is not None:
                progress(index)
    finally:
        client.close()
        out.seconds = time.monotonic() - started
    after = servers.processes()
    for name, pids in before.items():
        if after[name] != pids:
            out.crashes.append(f"{name}: processes {pids} at the start, {after[name]} now")
    return out

