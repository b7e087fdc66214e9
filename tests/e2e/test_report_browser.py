"""The demo report in a real browser: headless Chromium driven over the DevTools protocol.

What a unit test cannot see: that the page lays out, its figures decode and show at a
readable size, nothing scrolls sideways, and nothing is fetched from anywhere but the
report's own folder. The protocol is spoken directly over aiohttp's websocket client (a
dependency already), so no browser-driver package is needed; Chromium is Debian's
(``scripts/install-chromium.sh``). A full-page screenshot is left in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.demo.report import write_report
from tests.support.demo_data import demo_data

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("TRELLIS_CHROMIUM", "/usr/bin/chromium"))
# Background networking off: on a closed network its connection attempts fail in bursts.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")
WIDTH = 1280
SECTIONS = {"training": "Training curves per model version", "canary": "Canary timeline",
            "drift": "Drift p-values per feature over time", "lineage": "Lineage"}
INSPECT = """(() => {
  const shown = el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility === 'visible' && s.display !== 'none'; };
  return {
    height: document.documentElement.scrollHeight,
    width: document.documentElement.scrollWidth,
    sections: [...document.querySelectorAll('section[id]')].map(s => {
      const h2 = s.querySelector('h2');
      return {id: s.id, h2: h2 ? h2.textContent.trim() : null, h2Shown: !!h2 && shown(h2),
              imgs: [...s.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'),
                complete: i.complete, natural: i.naturalWidth,
                shown: i.getBoundingClientRect().width}))};
    }),
  };
})()"""


class DevTools:
    """One page's DevTools session: numbered calls, events kept until asked for."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.last_id = ws, 0
        self.events: list[dict[str, Any]] = []

    async def _next(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=30)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"DevTools connection ended: {message.type}")
        return json.loads(message.data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await self._next()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def event(self, method: str) -> dict[str, Any]:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(await self._next())
        return next(e for e in self.events if e.get("method") == method)


@pytest.fixture(scope="module")
def devtools_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A headless Chromium for this module; yields its DevTools port."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/install-chromium.sh")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = (profile.parent / "chromium.log").open("wb")
    # Chromium leaves an org.chromium.Chromium.* dir in its TMPDIR when terminated; a
    # short one of its own (the singleton socket's path must stay short) goes after it.
    scratch = tempfile.TemporaryDirectory(prefix="chromium-")
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                             "about:blank"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TMPDIR": scratch.name})
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited {proc.returncode}, see {log.name}"
            assert time.monotonic() < deadline, f"no DevTools port after 30 s, see {log.name}"
            time.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        scratch.cleanup()


async def _open(port: int, page: Path) -> tuple[dict[str, Any], list[str], bytes]:
    """Load ``page`` at 1280 px wide: what it shows, what it requested, a full screenshot."""
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            await tools.call("Network.enable")
            await tools.call("Page.enable")
            await tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900,
                             deviceScaleFactor=1, mobile=False)
            await tools.call("Page.navigate", url=page.as_uri())
            await tools.event("Page.loadEventFired")
            facts = (await tools.call("Runtime.evaluate", expression=INSPECT,
                                      returnByValue=True))["result"]["value"]
            png = await tools.call("Page.captureScreenshot", format="png",
                                   captureBeyondViewport=True, clip={
                                       "x": 0, "y": 0, "width": WIDTH,
                                       "height": facts["height"], "scale": 1})
            requests = [e["params"]["request"]["url"] for e in tools.events
                        if e.get("method") == "Network.requestWillBeSent"]
        await http.get(f"http://127.0.0.1:{port}/json/close/{target['id']}")
    return facts, requests, base64.b64decode(png["data"])


@pytest.mark.parametrize("stop_at", [None, 500.0], ids=["whole-story", "stopped-at-8:20"])
def test_the_report_shows_its_sections_and_figures_in_chromium(
        devtools_port: int, tmp_path: Path, stop_at: float | None) -> None:
    page = write_report(demo_data(stop_at=stop_at), tmp_path / "report")
    shot = tmp_path / "report-screenshot.png"
    facts, requests, png = asyncio.run(_open(devtools_port, page))
    shot.write_bytes(png)
    print(f"screenshot: {shot}")

    sections = {s["id"]: s for s in facts["sections"]}
    for ident, title in SECTIONS.items():
        assert ident in sections, f"section #{ident} missing"
        assert sections[ident]["h2Shown"] and title in sections[ident]["h2"], sections[ident]
    for ident in ("training", "canary", "drift"):
        imgs = sections[ident]["imgs"]
        assert len(imgs) == 1, f"#{ident} should hold one figure: {imgs}"
        assert imgs[0]["complete"] and imgs[0]["natural"] > 0, f"#{ident}: {imgs[0]}"
        assert imgs[0]["shown"] >= 900, f"#{ident}'s figure is too small to read: {imgs[0]}"
    assert facts["width"] <= WIDTH, "the page scrolls sideways"
    assert 2500 <= facts["height"] <= 7000, f"page height {facts['height']} px"
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000
    assert requests and all(u.startswith("file://") for u in requests), requests
