"""A git server over HTTP with Basic authentication: git's own ``git http-backend`` (CGI)
behind a small threaded HTTP server on loopback, as a private https remote behaves.

``protocol_v2=False`` drops the client's ``Git-Protocol`` header, so the backend speaks
protocol v0, which (by default) refuses fetching a commit that no ref advertises: what
an older or stricter server does to a shallow fetch by commit id.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType


class GitHttpServer:
    """Serves the bare repositories under ``root`` at ``http://127.0.0.1:<port>/<name>``
    to ``username``/``password`` only; ``attempts`` records (user, accepted) per request
    that carried credentials."""

    def __init__(self, root: Path, username: str, password: str, *,
                 protocol_v2: bool = True) -> None:
        self.root = root
        self.username, self.password = username, password
        self.protocol_v2 = protocol_v2
        self.attempts: list[tuple[str, bool]] = []
        self.paths: list[str] = []  # every request's path and query, as the server saw it
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> GitHttpServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        ok = (user, password) == (self.username, self.password)
        self.attempts.append((user, ok))
        return ok

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # the test asserts on what it needs

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                server.paths.append(self.path)
                body = self._body() if self.command == "POST" else b""
                if not server._authorized(self.headers.get("Authorization")):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="farm"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                env = {"GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query,
                       "REQUEST_METHOD": self.command, "REMOTE_USER": server.username,
                       "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1",
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body)), "PATH": "/usr/bin:/bin"}
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if server.protocol_v2 and self.headers.get("Git-Protocol"):
                    env["HTTP_GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                                      capture_output=True, timeout=60, check=False)
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                headers = [line.split(":", 1) for line in head.decode().split("\r\n") if line]
                status = next((v.strip() for k, v in headers if k.lower() == "status"), "200")
                self.send_response(int(status.split()[0]))
                for key, value in headers:
                    if key.lower() != "status":
                        self.send_header(key, value.strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
