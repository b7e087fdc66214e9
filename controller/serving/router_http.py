"""The router's HTTP plumbing, split from ``router.py``: body guard, upstream calls, errors.

Answers follow Seldon Core 1.17.1's executor (docs/contracts.md): errors in Seldon's
``status`` format; a predictor's non-200 answer passed through with its own status and
body (the executor's ``respondWithError`` does the same), so a model's 500 stays a 500;
only what the router itself could not get is its own: unreachable or a non-JSON 200 is
502, too slow 504.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from controller.serving.router_config import Predictor

PUID_HEADER = "Seldon-Puid"  # the executor's response header (payload.SeldonPUIDHeader)
GRAPH_NODE = "classifier"  # the graph unit's name, as seldon.MODEL_CONTAINER renders it
HEALTH_TIMEOUT_S = 2.0
# A body not read to its end within this is refused (408): a sender that stalls, or a
# Content-Encoding aiohttp never finishes decoding (a 3-byte "deflate" body hangs it).
BODY_TIMEOUT_S = 10.0


def error(status: int, message: str, reason: str) -> web.Response:
    """An error in Seldon's format, so clients parse router and model errors alike."""
    body = {"status": {"status": 1, "code": status, "info": message, "reason": reason}}
    return web.json_response(body, status=status)


async def read_json(request: web.Request, limit: int) -> tuple[bytes, Any] | web.Response:
    """The body and its decoded JSON, or an error (413 oversize, 400 malformed, 408 slow)."""
    too_big = error(
        413,
        f"request body exceeds the limit of {limit} bytes; send fewer images per request",
        "PAYLOAD_TOO_LARGE",
    )
    if request.content_length is not None and request.content_length > limit:
        return too_big
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    return too_big
    except (web.RequestPayloadError, ConnectionError) as exc:  # a bad Content-Encoding,
        # a body cut off by its sender (who may no longer read this answer)
        return error(400, f"unreadable request body: {exc}", "BAD_BODY")
    except TimeoutError:
        message = f"request body not received (or not decodable) within {BODY_TIMEOUT_S:g}s"
        return error(408, message, "BODY_TIMEOUT")
    try:  # on the loop: the C decoder holds the GIL, so a thread would not help
        return bytes(body), json.loads(body)
    except ValueError as exc:
        return error(400, f"malformed JSON body: {exc}", "BAD_JSON")
    except RecursionError:  # [[[[...]]]] deeper than the decoder's recursion limit
        return error(400, "malformed JSON body: nested too deeply", "BAD_JSON")


async def forward(
    session: aiohttp.ClientSession, predictor: Predictor, body: bytes, timeout_s: float
) -> tuple[int, dict[str, Any] | web.Response]:
    """POST to the predictor: (200, decoded answer) or (code for metrics, response)."""
    where = f"predictor {predictor.name} (v{predictor.version})"
    try:
        async with session.post(
            f"{predictor.url}/api/v1.0/predictions",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            code, raw, ctype = resp.status, await resp.read(), resp.content_type
    except TimeoutError:
        message = f"{where} did not answer within {timeout_s:g}s"
        return 504, error(504, message, "UPSTREAM_TIMEOUT")
    except aiohttp.ClientError as exc:
        return 502, error(502, f"{where} unreachable: {exc}", "UPSTREAM_ERROR")
    if code != 200:  # the model's own verdict (its 4xx or 5xx), as the executor passes it
        return code, web.Response(status=code, body=raw, content_type=ctype)
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        answer = exc
    if not isinstance(answer, dict):
        return 502, error(502, f"{where} answered 200 with no JSON object", "UPSTREAM_ERROR")
    return 200, answer


async def check(session: aiohttp.ClientSession, predictor: Predictor) -> tuple[bool, str]:
    """Whether the predictor's model server answers its health check."""
    try:
        async with session.get(
            f"{predictor.url}/health/status",
            timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
        ) as resp:
            await resp.read()
            return resp.status == 200, f"HTTP {resp.status}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def graph_metadata(
    session: aiohttp.ClientSession, predictor: Predictor
) -> tuple[int, dict[str, Any]]:
    """The executor's ``/api/v1.0/metadata`` for one predictor: its graph's one model."""
    try:
        async with session.get(
            f"{predictor.url}/api/v1.0/metadata",
            timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
        ) as resp:
            code, model = resp.status, await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        info = f"predictor {predictor.name} metadata unavailable: {exc}"
        return 502, {"status": {"status": 1, "code": 502, "info": info, "reason": "UPSTREAM"}}
    if code != 200 or not isinstance(model, dict):
        return (code if code != 200 else 502), model if isinstance(model, dict) else {}
    return 200, {
        "name": predictor.name,
        "models": {GRAPH_NODE: model},
        "graphinputs": model.get("inputs", []),
        "graphoutputs": model.get("outputs", []),
    }
