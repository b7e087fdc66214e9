"""The push webhook: a git host asks for a sync now instead of at the next interval.

``POST /hooks/<namespace>/<name>`` with GitHub's signature header
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``, keyed with
``webhook-secret`` from the SpecRepository's ``secretRef`` Secret. The body itself is
not trusted or parsed: a valid call only asks for a sync, and the reconciler fetches
and decides as always, so a replayed request can cause nothing but an early fetch.

The request is recorded the way Flux's receivers do it: the annotation
``mlops.trellis.dev/reconcile-requested-at`` is set to the time of the call, so it
survives a restart and reaches the active replica when this one is a standby; the local
reconciler is also woken at once (``on_valid``).

Answers: 202 (sync requested), 401 (no signature), 403 (wrong signature, or the
repository has no webhook secret), 404 (no such SpecRepository), each with a JSON
``{"message": ...}`` saying what to fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from controller import api
from controller.kube import SPEC_REPOSITORIES, ApiException, Kube

log = logging.getLogger("trellis.webhook")

SIGNATURE_HEADER = "X-Hub-Signature-256"
SECRET_KEY = "webhook-secret"
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


def sign(secret: bytes, body: bytes) -> str:
    """The header value a git host sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """Constant-time comparison of the received signature with the expected one."""
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class WebhookServer:
    """An aiohttp server on ``host:port``; ``on_valid(namespace, name)`` wakes the local
    reconciler."""

    def __init__(self, kube: Kube, on_valid: Callable[[str, str], None], *,
                 host: str = "0.0.0.0", port: int = 8001) -> None:
        self.kube = kube
        self.on_valid = on_valid
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/hooks/{namespace}/{name}", self.handle)
        return app

    async def start(self) -> int:
        """Listen; returns the bound port (a free one when ``port`` is 0)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("webhook listening on %s:%d (POST /hooks/<namespace>/<name>)",
                 self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            return _answer(401, f"missing {SIGNATURE_HEADER} header: sign the body with "
                                f"HMAC-SHA256 and the {SECRET_KEY} of the SpecRepository's "
                                "secretRef (sha256=<hex>)")
        body = await request.read()
        repo = await self.kube.get(SPEC_REPOSITORIES, namespace, name)
        if repo is None:
            return _answer(404, f"no SpecRepository {namespace}/{name}")
        secret_name = ((repo.get("spec") or {}).get("secretRef") or {}).get("name")
        data = await self.kube.secret_data(namespace, secret_name) if secret_name else None
        secret = (data or {}).get(SECRET_KEY)
        if not secret:
            where = f"Secret {namespace}/{secret_name}" if secret_name else "no secretRef"
            return _answer(403, f"SpecRepository {namespace}/{name} has no {SECRET_KEY} "
                                f"({where}): webhook calls are refused")
        if not signature_ok(secret, body, header):
            log.warning("webhook for %s/%s: signature mismatch", namespace, name)
            return _answer(403, f"{SIGNATURE_HEADER} does not match the body signed with the "
                                f"{SECRET_KEY} of Secret {namespace}/{secret_name}")
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        try:
            await self.kube.patch(SPEC_REPOSITORIES, namespace, name, {
                "metadata": {"annotations": {api.ANN_RECONCILE_REQUESTED: stamp}}})
        except ApiException as exc:  # the local wake-up below still works
            log.warning("webhook for %s/%s: could not record the request (%s %s)",
                        namespace, name, exc.status, exc.reason)
        self.on_valid(namespace, name)
        return _answer(202, f"sync of SpecRepository {namespace}/{name} requested")
