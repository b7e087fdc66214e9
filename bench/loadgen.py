"""A closed-loop HTTP load generator at fixed concurrency, and the rows it feeds.

Why aiohttp and not threads with ``http.client``: one event loop drives every connection,
so at 32 connections the client pays no GIL hand-offs between 32 threads and its own cost
per request stays small and alike at every level (on 2 cores the client shares the CPU
with the servers it measures, so a cheap client matters). The same loop, connector and
body are used against both targets, so whatever the client costs, both sides pay it.

Each level keeps ``concurrency`` requests in flight (each worker sends its next request
when its last one is answered) until ``max_requests`` have been sent or ``max_seconds``
have passed, whichever comes first; requests in flight then complete. Throughput is
completed requests / wall time of the level, not 1/mean latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.rows import row

HEADERS = {"Content-Type": "application/json"}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (1..99) as ``statistics.quantiles`` cuts it (the method the
    sequential serving rows use, so the two kinds of row read alike)."""
    if not values:
        raise ValueError("no values: nothing completed")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100)[int(q) - 1]


@dataclass
class LoadResult:
    """One level's bookkeeping: answered-200 latencies, failures, and the wall time."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0
    wall_s: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        """Completed (200) requests per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


async def _one(session: Any, url: str, body: bytes) -> bool:
    import aiohttp

    try:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            await resp.read()
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def run_level_async(url: str, body: bytes, concurrency: int, max_requests: int,
                          max_seconds: float, warm_up: int = 0) -> LoadResult:
    """``warm_up`` untimed requests at the same concurrency, then the measured level."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        left = warm_up

        async def warm() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _one(session, url, body)

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        result = LoadResult(concurrency)
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            while result.sent < max_requests and time.perf_counter() < deadline:
                result.sent += 1
                t0 = time.perf_counter()
                ok = await _one(session, url, body)
                if ok:
                    result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def run_level(url: str, body: bytes, concurrency: int, max_requests: int,
              max_seconds: float, warm_up: int = 0) -> LoadResult:
    """:func:`run_level_async` on a fresh event loop (the bench itself is synchronous)."""
    return asyncio.run(run_level_async(url, body, concurrency, max_requests, max_seconds,
                                       warm_up))


@dataclass(frozen=True)
class Plan:
    """How much load: per level and repeat, ``requests`` or ``seconds``, whichever first."""

    levels: tuple[int, ...] = (1, 8, 32)
    requests: int = 500
    seconds: float = 3.0
    repeats: int = 3

    def warm_up(self, concurrency: int) -> int:
        return max(20, 2 * concurrency)


def compare(targets: dict[str, str], body: bytes,
            plan: Plan) -> dict[str, dict[int, list[LoadResult]]]:
    """Every level against every target, ``plan.repeats`` times; the targets take turns
    within a level (their order flipped each repeat) so they meet the same machine load."""
    results: dict[str, dict[int, list[LoadResult]]] = {
        name: {c: [] for c in plan.levels} for name in targets}
    order = list(targets)
    for repeat in range(plan.repeats):
        for concurrency in plan.levels:
            for name in order if repeat % 2 == 0 else order[::-1]:
                result = run_level(targets[name], body, concurrency, plan.requests,
                                   plan.seconds, plan.warm_up(concurrency))
                if not result.completed:
                    raise RuntimeError(f"{name} at {concurrency} connections: no request "
                                       f"answered 200 ({result.errors} failed)")
                results[name][concurrency].append(result)
    return results


def repeated_row(name: str, values: Sequence[float], unit: str, baseline: str,
                 baseline_values: Sequence[float], notes: str) -> dict[str, Any]:
    """A row of medians over repeats; ``spread`` gives min and max of each side and of the
    per-repeat ratio (each repeat measured both sides back to back)."""
    if len(values) != len(baseline_values) or not values:
        raise ValueError("need one baseline figure per repeat")
    ratios = [v / b for v, b in zip(values, baseline_values, strict=True) if b]
    out = row(name, statistics.median(values), unit, baseline,
              statistics.median(baseline_values), notes)
    out["repeats"] = len(values)
    out["spread"] = {"value": [round(min(values), 3), round(max(values), 3)],
                     "baseline_value": [round(min(baseline_values), 3),
                                        round(max(baseline_values), 3)],
                     "ratio": [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None}
    return out


def load_rows(results: dict[str, dict[int, list[LoadResult]]], plan: Plan,
              work: str) -> list[dict[str, Any]]:
    """Per level: router req/s against the model server's, and p50 and p99 the same way.
    ``results`` holds ``router`` and ``direct`` (the same model server, no router)."""
    router, direct = results["router"], results["direct"]
    rows = []
    for c in plan.levels:
        r, d = router[c], direct[c]
        counts = (f"completed per repeat: router {[x.completed for x in r]}, direct "
                  f"{[x.completed for x in d]}; failed: router {sum(x.errors for x in r)}, "
                  f"direct {sum(x.errors for x in d)}")
        notes = (f"{c} connection(s), each level {plan.requests} requests or "
                 f"{plan.seconds:g} s whichever first after {plan.warm_up(c)} warm-up "
                 f"requests, aiohttp closed-loop client; {work}; {counts}")
        rows.append(repeated_row(f"serving throughput at {c} connections: router + Seldon "
                                 "wrapper", [x.rps for x in r], "req/s",
                                 "Seldon wrapper direct, same load", [x.rps for x in d],
                                 notes + "; target ratio >= 0.8 at 8 and 32"))
        for q in (50, 99):
            rows.append(repeated_row(
                f"serving p{q} latency at {c} connections: router + Seldon wrapper",
                [x.p(q) for x in r], "ms", "Seldon wrapper direct, same load",
                [x.p(q) for x in d], notes))
    return rows
