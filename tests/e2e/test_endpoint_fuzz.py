"""Generated requests against the prediction and feedback endpoints: never a 5xx.

The real servers (router + seldon-core-microservice from ``.venv-serving``) of one local
deployment; a fixed-seed slice of the endpoint fuzzer (``tests/support/endpointfuzz.py``;
the full 10,000 run is ``bench/fuzz_bench.py``), then the requests that once answered
5xx or hung a worker, each followed by a good request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import endpointfuzz as ef

pytestmark = pytest.mark.e2e

SEED = 14
CASES = 1000


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ef.Servers]:
    if not (ef.SERVING_PYTHON.parent / "seldon-core-microservice").exists():
        pytest.skip(f"serving environment missing: create {ef.SERVING_PYTHON.parent.parent}")
    with ef.serving(tmp_path_factory.mktemp("endpoint-fuzz")) as running:
        yield running


def test_generated_requests_never_get_a_5xx(servers: ef.Servers) -> None:
    out = ef.run(servers, CASES, SEED)
    print(out.summary())
    assert not out.server_errors, "\n".join(out.server_errors[:10])
    assert not out.good_failures, "\n".join(out.good_failures[:10])
    assert not out.no_answer, "\n".join(out.no_answer[:10])
    assert not out.crashes, out.crashes
    for part in ("router predictions", "router feedback", "model predictions",
                 "model feedback"):
        assert out.by_target[part] >= CASES // 10, out.summary()
    assert out.statuses["200"] >= CASES // 20 and out.statuses["400"] >= CASES // 2


IMAGE = [[[0, 1, 0]] * 64] * 64
GOOD = json.dumps({"data": {"ndarray": [IMAGE]}}).encode()
AUTH = ("Authorization", f"Bearer {ef.TOKEN}")
JSON = ("Content-Type", "application/json")
DEEP = b"[" * 100_000 + b"]" * 100_000


def _case(target: str, path: str, body: bytes, *headers: tuple[str, str],
          method: str = "POST", raw: bytes | None = None) -> ef.Case:
    extra = [AUTH] if target == "router" else []
    return ef.Case(0, target, "", "", method=method, path=path,
                   headers=[*extra, *(headers or (JSON,))], body=body, raw=raw)


# (what, request, expected status or statuses; None: the connection may close unanswered)
ONCE_BROKEN = [
    ("router: JSON nested past the recursion limit",
     _case("router", "/api/v1.0/predictions", b'{"data": ' + DEEP + b"}"), 400),
    ("router: feedback nested past the recursion limit",
     _case("router", "/api/v1.0/feedback", b'{"puid": ' + DEEP + b"}"), 400),
    ("router: Content-Encoding gzip that is not gzip",
     _case("router", "/api/v1.0/predictions", b"{}", JSON, ("Content-Encoding", "gzip")), 400),
    ("router: a 3-byte deflate body aiohttp never finishes decoding (hung)",
     _case("router", "/api/v1.0/predictions", b"1.5", JSON, ("Content-Encoding", "deflate")),
     (400, 408)),  # aiohttp's own 400, or, when its decoder hangs, the router's 408
    ("router: ndarray and tensor side by side (the log read the tensor)",
     _case("router", "/api/v1.0/predictions", json.dumps(
         {"data": {"ndarray": [IMAGE], "tensor": {"shape": [1]}}}).encode()), 200),
    ("model: JSON nested past the recursion limit",
     _case("model", "/api/v1.0/predictions", b'{"data": ' + DEEP + b"}"), 400),
    ("model: a bad json= query argument",
     _case("model", "/predict?json=%7Bbad", b"", ("Accept", "*/*"), method="GET"), 400),
    ("model: a bad json= form field",
     _case("model", "/api/v1.0/predictions", b"json=%7Bbad",
           ("Content-Type", "application/x-www-form-urlencoded")), 400),
    ("model: meta that is not an object",
     _case("model", "/api/v1.0/predictions", json.dumps(
         {"data": {"ndarray": [IMAGE]}, "meta": [1]}).encode()), 200),
    ("model: a tensor shape with a boolean in it",
     _case("model", "/api/v1.0/predictions", json.dumps({"data": {"tensor": {
         "shape": [True, 64, 64, 3], "values": [0.5] * 12288}}}).encode()), 400),
    ("model: feedback that is a bare number",
     _case("model", "/api/v1.0/feedback", b"5"), 400),
    ("model: feedback with a ragged request",
     _case("model", "/api/v1.0/feedback", json.dumps(
         {"request": {"data": {"ndarray": [[1], [1, 2]]}}}).encode()), 400),
    ("model: a chunked body cut off after its chunk (gunicorn 20.1 spun forever)",
     _case("model", "", b"", raw=b"POST /api/v1.0/predictions HTTP/1.1\r\nHost: x\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"2\r\n{}"), None),
]


def _good(target: str) -> ef.Case:
    headers = [AUTH, JSON] if target == "router" else [JSON]
    return ef.Case(0, target, "predictions", "good", headers=headers, body=GOOD)


@pytest.mark.parametrize(("what", "case", "status"), ONCE_BROKEN,
                         ids=[w for w, _, _ in ONCE_BROKEN])
def test_requests_that_once_broke_a_server(servers: ef.Servers, what: str, case: ef.Case,
                                           status: int | tuple[int, ...] | None) -> None:
    client = ef.Client(servers)
    try:
        answer = client.send(case)
        if status is None:  # broken framing: a 4xx, or the connection closed
            assert answer.status is None or answer.status < 500, (what, answer)
        else:
            assert answer.status in (status if isinstance(status, tuple) else (status,)), \
                (what, answer)
        assert client.send(_good(case.target)).status == 200, what
    finally:
        client.close()


def test_a_header_that_is_not_utf8_is_a_wrong_token(servers: ef.Servers) -> None:
    """aiohttp hands undecodable header bytes on as surrogate escapes; comparing them
    with the token raised (500)."""
    raw = (b"POST /api/v1.0/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
           + ef.TOKEN.encode() + b"\xe9\r\nContent-Type: application/json\r\n"
           + f"Content-Length: {len(GOOD)}\r\n\r\n".encode() + GOOD)
    client = ef.Client(servers)
    try:
        assert client.send(ef.Case(0, "router", "", "", raw=raw)).status == 403
        assert client.send(_good("router")).status == 200
    finally:
        client.close()


def test_the_slice_is_reproducible() -> None:
    """A fixed seed gives the same requests, so a failure can be replayed."""
    gen_a, gen_b = ef.Generator(SEED, []), ef.Generator(SEED, [])
    for i in range(200):
        a, b = gen_a.case(i), gen_b.case(i)
        assert (a.what, a.path, a.headers, a.body, a.raw) == (b.what, b.path, b.headers,
                                                              b.body, b.raw)
