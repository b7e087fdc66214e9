"""The API-server side of a sync: read the scopes, server-side apply, prune.

Thin on purpose: which objects to write is decided in ``controller.gitops.sync``.
Writes run with bounded concurrency (the API client is synchronous underneath, one
worker thread per request), so 500 specs take seconds, not minutes, without
flooding the API server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

from controller import api
from controller.gitops.sync import Key, key_of
from controller.kube import ApiException, Kube, Resource, api_message, for_kind

CONCURRENCY = 8


def resource(kind: str) -> Resource:
    return for_kind(api.KINDS_BY_NAME[kind])


async def _bounded(calls: Iterable[Awaitable[str | None]], limit: int) -> list[str]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[str | None]) -> str | None:
        async with gate:
            return await call

    results = await asyncio.gather(*(one(c) for c in calls))
    return [r for r in results if r]


async def read_scopes(kube: Kube, scopes: set[tuple[str, str]]) -> dict[Key, dict[str, Any]]:
    """Every object of each (kind, namespace) scope, whoever owns it."""
    found: dict[Key, dict[str, Any]] = {}

    async def list_one(kind: str, namespace: str) -> None:
        for obj in await kube.list(resource(kind), namespace):
            obj.setdefault("kind", kind)
            found[key_of(obj)] = obj

    await asyncio.gather(*(list_one(k, ns) for k, ns in sorted(scopes)))
    return found


async def apply_objects(kube: Kube, objs: list[dict[str, Any]], *, dry_run: bool = False,
                        limit: int = CONCURRENCY) -> list[str]:
    """Server-side apply (manager ``trellis``, force) each object; the errors.

    ``dry_run``: the API server checks every write (admission, namespaces, schema)
    and stores nothing, so a commit it would refuse in part is refused whole.
    """
    async def apply(obj: dict[str, Any]) -> str | None:
        kind, ns, name = key_of(obj)
        try:
            await kube.apply(obj, field_manager=api.FIELD_MANAGER, force=True, dry_run=dry_run)
        except ApiException as exc:
            return f"{kind} {ns}/{name}: {api_message(exc)}"
        return None

    return await _bounded((apply(o) for o in objs), limit)


async def delete_objects(kube: Kube, keys: list[Key], limit: int = CONCURRENCY) -> list[str]:
    """Delete each object (already gone is fine); the errors."""
    async def delete(key: Key) -> str | None:
        kind, ns, name = key
        try:
            await kube.delete(resource(kind), ns, name)
        except ApiException as exc:
            return f"pruning {kind} {ns}/{name}: {api_message(exc)}"
        return None

    return await _bounded((delete(k) for k in keys), limit)
