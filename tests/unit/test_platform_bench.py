"""The platform bench's serving rows compare the same photos and equal work, and its load
generator keeps its level and bounds (against a tiny in-process HTTP server)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from bench import loadgen, platform_bench
from controller.serving.router_config import images_uint8


def test_bin_data_and_ndarray_bodies_carry_the_same_photo() -> None:
    ndarray = json.loads(platform_bench._image_body())
    photo = json.loads(platform_bench._bin_data_body())
    gap = np.abs(images_uint8(photo).astype(int) - images_uint8(ndarray).astype(int))
    assert gap.max() <= 1  # the ndarray body's floats are rounded to 4 decimals
    assert len(platform_bench._bin_data_body()) * 10 < len(platform_bench._image_body())


def test_photo_rows_compare_like_with_like() -> None:
    rows = platform_bench._photo_rows(3, 1000, 100, ([10.0, 12.0, 14.0], [8.0, 9.0, 10.0]),
                                      ([4.0, 5.0, 6.0], [3.0, 3.5, 4.0]))
    body = rows[0]
    assert body["value"] == 100 and body["baseline_value"] == 1000 and body["ratio"] == 0.1
    names = [r["name"] for r in rows[1:]]
    assert len(names) == 4 and all("binData PNG" in n for n in names)
    for r in rows[1:]:
        assert r["baseline"].startswith("ndarray JSON photo") and r["ratio"] < 1
        assert r["baseline"].split(", ", 1)[1] == r["name"].split("photo, ", 1)[1]


def test_tensor_batch_carries_the_same_photos_as_the_single_bin_data_bodies() -> None:
    pixels = platform_bench._photos_uint8(3)
    batch = json.loads(platform_bench._tensor_body(pixels))
    assert batch["data"]["tensor"]["shape"] == [3, 64, 64, 3]
    from_batch = np.rint(images_uint8(batch).astype(float)).astype(int)
    for i, photo in enumerate(pixels):
        single = images_uint8(json.loads(platform_bench._bin_data_body(photo)))[0]
        assert np.abs(from_batch[i] - single.astype(int)).max() <= 1
    assert len(set(map(bytes, pixels))) == 3  # three different photos


def test_batch_rows_compare_equal_work() -> None:
    rows = platform_bench._batch_rows(3, 10_000, 2_000, [64.0, 60.0, 70.0],
                                      [96.0, 100.0, 90.0], [3.0] * 90 + [4.0] * 6)
    per_request, per_photo = rows
    assert per_request["value"] == 64.0 and per_request["baseline_value"] == 96.0
    assert per_photo["value"] == 2.0 and per_photo["baseline_value"] == 3.0
    assert "32 single-photo" in per_request["baseline"] and "per photo" in per_photo["name"]


def test_percentile_matches_the_sequential_rows_and_refuses_nothing() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.5
    assert loadgen.percentile(values, 99) > 99.0
    assert loadgen.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        loadgen.percentile([], 50)


def _result(concurrency: int, latencies: list[float], wall_s: float) -> loadgen.LoadResult:
    return loadgen.LoadResult(concurrency, latencies, 0, len(latencies), wall_s)


def test_load_rows_are_medians_over_repeats_with_spread() -> None:
    plan = loadgen.Plan(levels=(1, 8), requests=4, seconds=1, repeats=3)
    results = {
        "router": {c: [_result(c, [2.0] * 4, w) for w in (1.0, 2.0, 4.0)] for c in (1, 8)},
        "direct": {c: [_result(c, [1.0] * 4, w) for w in (0.5, 1.0, 1.0)] for c in (1, 8)},
    }
    rows = loadgen.load_rows(results, plan, "work")
    assert [r["name"] for r in rows[:3]] == [
        "serving throughput at 1 connections: router + Seldon wrapper",
        "serving p50 latency at 1 connections: router + Seldon wrapper",
        "serving p99 latency at 1 connections: router + Seldon wrapper"]
    rps = rows[0]
    assert rps["value"] == 2.0 and rps["baseline_value"] == 4.0 and rps["ratio"] == 0.5
    assert rps["repeats"] == 3 and rps["spread"]["value"] == [1.0, 4.0]
    assert rps["spread"]["ratio"] == [0.25, 0.5]
    assert rows[1]["value"] == 2.0 and rows[1]["ratio"] == 2.0
    assert len(rows) == 6 and "8 connection" in rows[3]["notes"]
    with pytest.raises(ValueError):
        loadgen.repeated_row("x", [1.0], "ms", "y", [1.0, 2.0], "")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        time.sleep(0.01)
        with cls.lock:
            cls.in_flight -= 1
        status = 500 if body == b"fail" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    _Handler.most = 0
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_load_generator_keeps_the_level_and_stops_at_the_request_bound(server: str) -> None:
    result = loadgen.run_level(server, b"{}", 4, 40, 30.0, warm_up=8)
    assert result.sent == 40 and result.completed == 40 and result.errors == 0
    assert _Handler.most == 4  # never more than the level, and the level is reached
    assert all(ms >= 10.0 for ms in result.latencies_ms)
    # 4 in flight: the wall time is well under the latencies' sum (what sequential takes)
    assert result.wall_s < sum(result.latencies_ms) / 1000 / 2
    assert result.rps == result.completed / result.wall_s


def test_load_generator_stops_at_the_time_bound_and_counts_failures(server: str) -> None:
    started = time.perf_counter()
    timed = loadgen.run_level(server, b"{}", 2, 10_000, 0.2)
    assert time.perf_counter() - started < 2.0 and 0 < timed.sent < 10_000
    failed = loadgen.run_level(server, b"fail", 2, 6, 5.0)
    assert failed.errors == 6 and failed.completed == 0 and failed.rps == 0.0
    with pytest.raises(ValueError):
        failed.p(50)
