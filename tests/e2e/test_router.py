"""The router alone, in-process, against fake predictors: error mapping, reloads, seeds.

The full stack (real model servers) is in test_local_serving.py; these cases need
upstreams that misbehave on purpose, which a real model server cannot be made to do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controller.processes import free_port
from controller.serving.router import Router
from controller.serving.router_config import Predictor, RouterConfig, write_config

pytestmark = pytest.mark.e2e

OK_ANSWER = {
    "data": {"names": ["bad", "good"], "ndarray": [[0.2, 0.8]]},
    "meta": {"tags": {"trellis.features": [[0.1, 0.2]], "trellis.predictions": [1]}},
}


async def _ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(OK_ANSWER)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.json_response(OK_ANSWER)


async def _broken(request: web.Request) -> web.Response:
    body = {"status": {"status": 1, "info": "model failed: boom", "code": -1}}
    return web.json_response(body, status=500)


async def _html_404(request: web.Request) -> web.Response:
    return web.Response(status=404, text="<h1>nope</h1>", content_type="text/html")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


Handler = Callable[[web.Request], Awaitable[web.Response]]


@asynccontextmanager
async def upstreams(**handlers: Handler) -> AsyncIterator[dict[str, str]]:
    """Fake predictors on loopback: name -> base URL."""
    runners, urls = [], {}
    for name, handler in handlers.items():
        app = web.Application()
        app.router.add_post("/api/v1.0/predictions", handler)
        app.router.add_get("/health/status", _health)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


@asynccontextmanager
async def router(config_path: Path, seed: int | None = None) -> AsyncIterator[str]:
    instance = Router(config_path, seed=seed)
    runner = web.AppRunner(instance.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _config(path: Path, weights: dict[str, tuple[str, int]], **kw: Any) -> str:
    items = enumerate(weights.items())
    predictors = tuple(Predictor(name, i + 1, url, w) for i, (name, (url, w)) in items)
    return write_config(path, RouterConfig("farm/test", predictors, **kw))


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any = None, data: Any = None
) -> tuple[int, Any]:
    async with session.post(url, json=body, data=data) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def _await_revision(session: aiohttp.ClientSession, base: str, revision: str) -> None:
    for _ in range(100):
        async with session.get(f"{base}/router/status") as resp:
            if (await resp.json())["revision"] == revision:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("router did not reload its config")


def test_error_mapping_reload_and_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = tmp_path / "router.json"
        async with upstreams(ok=_ok, slow=_slow, broken=_broken, html=_html_404) as up:
            _config(cfg, {"ok": (up["ok"], 100)}, timeout_s=0.5, max_body_bytes=4096)
            async with router(cfg) as base, aiohttp.ClientSession() as s:
                predict = f"{base}/api/v1.0/predictions"
                status, answer = await _post(s, predict, {"data": {"ndarray": [[0.5]]}})
                assert status == 200 and answer["meta"]["tags"]["trellis.predictor"] == "ok"
                assert "trellis.features" not in answer["meta"]["tags"]

                cases = [
                    ("slow", 504, "did not answer within 0.5s"),
                    ("broken", 500, "model failed: boom"),  # the model's own, as Seldon
                    ("html", 404, "<h1>nope</h1>"),
                    ("dead", 502, "unreachable"),
                ]
                for name, code, words in cases:
                    url = up.get(name, f"http://127.0.0.1:{free_port()}")
                    revision = _config(cfg, {name: (url, 100)}, timeout_s=0.5)
                    await _await_revision(s, base, revision)
                    async with s.post(predict, json={"data": {}}) as resp:
                        status, text = resp.status, await resp.text()
                        assert len(resp.headers["Seldon-Puid"]) == 36  # on errors too
                    answer = json.loads(text) if text.startswith("{") else text
                    shown = answer if isinstance(answer, str) else answer["status"]["info"]
                    assert status == code and words in shown, (name, status, answer)

                async with s.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                for line in (
                    'trellis_router_requests_total{code="504",predictor="slow",version="1"} 1.0',
                    'trellis_router_requests_total{code="500",predictor="broken",version="1"} 1.0',
                    'trellis_router_requests_total{code="404",predictor="html",version="1"} 1.0',
                    'trellis_router_requests_total{code="502",predictor="dead",version="1"} 1.0',
                    'trellis_router_predictions_total{class="good",predictor="ok",version="1"} 1.0',
                ):
                    assert line in text, line

                cfg.write_text('{"deployment": "farm/test", "predictors": "oops"}')
                await asyncio.sleep(1.2)  # two watch cycles: the bad file must be refused
                async with s.get(f"{base}/router/status") as resp:
                    assert (await resp.json())["predictors"][0]["name"] == "dead"
                async with s.get(f"{base}/metrics") as resp:
                    assert "trellis_router_config_errors_total 1.0" in await resp.text()

                revision = _config(cfg, {"ok": (up["ok"], 0)}, max_body_bytes=4096)
                await _await_revision(s, base, revision)
                status, answer = await _post(s, predict, {"data": {}})
                assert status == 503 and "weight > 0" in answer["status"]["info"]
                async with s.get(f"{base}/health/status") as resp:
                    assert resp.status == 503
                status, answer = await _post(s, predict, data=b"[" * 5000)
                assert status == 413 and "4096 bytes" in answer["status"]["info"]

                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(10):
                        yield b" " * 1000

                status, answer = await _post(s, predict, data=chunks())  # no Content-Length
                assert status == 413
                status, answer = await _post(s, predict, data=b"{oops")
                assert status == 400 and "malformed JSON" in answer["status"]["info"]
                feedback = {"puid": "x", "label": 1}
                status, answer = await _post(s, f"{base}/api/v1.0/feedback", feedback)
                assert status == 404 and "request logging is off" in answer["status"]["info"]

    asyncio.run(scenario())


async def _features(request: web.Request) -> web.Response:
    """A model answer with the drift features the request log stores."""
    await request.read()
    return web.json_response({
        "data": {"names": ["bad", "good"], "ndarray": [[0.2, 0.8]]},
        "meta": {"tags": {"trellis.features": [[0.1] * 8], "trellis.predictions": [1]}},
    })


def test_seldon_paths_and_a_full_log_that_never_refuses(tmp_path: Path) -> None:
    image = {"data": {"ndarray": [[[[0.5, 0.5, 0.5]] * 64] * 64]}}

    async def scenario() -> None:
        cfg = tmp_path / "router.json"
        async with upstreams(ok=_features) as up:
            _config(cfg, {"ok": (up["ok"], 100)}, log_dir=tmp_path / "log",
                    max_log_bytes=60_000)  # room for four images
            async with router(cfg) as base, aiohttp.ClientSession() as s:
                ingress = f"{base}/seldon/farm/test/api/v1.0"
                puids = []
                for i in range(10):
                    url = f"{ingress}/predictions" if i % 2 else f"{base}/api/v1.0/predictions"
                    async with s.post(url, json=image) as resp:
                        assert resp.status == 200, await resp.text()
                        answer = await resp.json()
                        assert answer["meta"]["puid"] == resp.headers["Seldon-Puid"]
                    puids.append(answer["meta"]["puid"])
                    fb = {"response": answer,
                          "truth": {"data": {"tensor": {"shape": [1], "values": [1.0]}}}}
                    status, got = await _post(s, f"{ingress}/feedback", fb)
                    assert status == 200, got  # logged, or dropped once the log is full
                async with s.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                assert "trellis_router_log_full 1.0" in text
                assert 'trellis_router_log_dropped_total{kind="request"}' in text
                assert 'trellis_router_log_dropped_total{kind="feedback"}' in text
                assert "trellis_router_rejected_total{" not in text  # nothing refused
                status, got = await _post(s, f"{ingress}/feedback",
                                          {"puid": puids[-1], "label": 1})
                assert status == 200 and got["meta"]["tags"]["trellis.logged"] is False, got
                status, got = await _post(s, f"{base}/seldon/farm/nope/api/v1.0/predictions",
                                          image)
                assert status == 404 and "farm/test" in got["status"]["info"]

                _config(cfg, {"ok": (up["ok"], 100)}, log_dir=tmp_path / "log",
                        max_log_bytes=10_000_000)  # room again: logging resumes
                await asyncio.sleep(1.2)
                async with s.post(f"{base}/api/v1.0/predictions", json=image) as resp:
                    assert resp.status == 200
                async with s.get(f"{base}/metrics") as resp:
                    assert "trellis_router_log_full 0.0" in await resp.text()

    asyncio.run(scenario())


def test_the_split_is_reproducible_under_a_seed(tmp_path: Path) -> None:
    async def picks(seed: int) -> list[str]:
        cfg = tmp_path / f"router-{seed}.json"
        async with upstreams(a=_ok, b=_ok) as up:
            _config(cfg, {"stable": (up["a"], 70), "canary": (up["b"], 30)})
            async with router(cfg, seed=seed) as base, aiohttp.ClientSession() as s:
                out = []
                for _ in range(40):
                    _, answer = await _post(s, f"{base}/api/v1.0/predictions", {"data": {}})
                    out.append(answer["meta"]["tags"]["trellis.predictor"])
                return out

    first, second = asyncio.run(picks(3)), asyncio.run(picks(3))
    assert first == second and set(first) == {"stable", "canary"}
