"""Endpoint fuzzing, the requests: a seeded generator of prediction and feedback calls.

Cheap enough for tens of thousands of cases, and reproducible (a fixed seed gives the
same bytes, so a failing case can be replayed): JSON shapes (valid Seldon messages, then
wrong types, missing and unknown fields, ragged and wrong-sized images, tensors whose
shape lies, batches past the limit, feedback with wrong puids and labels), numbers
(NaN/Infinity literals, 1e400, integers of thousands of digits), nesting past the
decoder's recursion limit, sizes around the body limit, encodings (UTF-16/32, BOMs,
Latin-1, invalid UTF-8, lone surrogates, NUL), truncated and trailing-garbage bodies,
content types and encodings (forms, multipart, gzip that is not gzip), methods, query
strings, Authorization headers, and a share of raw-socket requests whose HTTP framing
itself is broken (a Content-Length that lies, bad chunking, header bytes that are not
text).

Sending them and judging the answers is ``tests/support/endpointfuzz.py``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import re
import struct
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_BODY_BYTES = 256 * 1024  # the deployment's body limit (router and model server)
TOKEN = "fuzz-token-0123456789"
IMAGE_SHAPE = (64, 64, 3)
MAX_BATCH = 256

PREDICT_PATHS = ("/api/v1.0/predictions", "/api/v0.1/predictions")
FEEDBACK_PATHS = ("/api/v1.0/feedback", "/api/v0.1/feedback")


@dataclass
class Case:
    """One request; ``what`` says how it was made, so a failure reads as its recipe."""

    index: int
    target: str  # "router" | "model"
    endpoint: str  # "predictions" | "feedback" | "other"
    what: str  # what was generated, for the report
    method: str = "POST"
    path: str = "/api/v1.0/predictions"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None  # a whole HTTP request, sent as is on its own socket
    chunked: bool = False


def image(rng: random.Random, low: float = 0.0, high: float = 1.0) -> list:
    """One 64x64x3 image as nested lists (3 decimals keep the JSON small)."""
    arr = np.round(np.random.default_rng(rng.randrange(2**32)).uniform(
        low, high, IMAGE_SHAPE), 3)
    return arr.tolist()


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its signature, IHDR and IEND: the size it claims, no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


class Generator:
    """Seeded request generator; ``puids`` holds puids the router really issued."""

    def __init__(self, seed: int, puids: list[str]) -> None:
        self.rng = random.Random(seed)
        self.puids = puids
        self.images = [image(random.Random(seed + i)) for i in range(4)]
        # The good request's image: 0s and 1s, the cheapest valid body to send and parse.
        self.good = np.random.default_rng(seed).integers(0, 2, IMAGE_SHAPE).tolist()

    # ---- JSON values ---------------------------------------------------------------
    def scalar(self) -> Any:
        r = self.rng
        return r.choice([
            None, True, False, 0, 1, -1, 0.5, r.uniform(-1e6, 1e6), 2**63, -(2**63) - 1,
            1e308, "", "x", "0.5", "NaN", "\u00e9", "\U0001f383", " " * r.randrange(50),
            r.randrange(-10**9, 10**9),
        ])

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        if depth > 3 or r.random() < 0.4:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        keys = ["data", "ndarray", "tensor", "shape", "values", "meta", "puid", "label",
                "labels", "names", "x", ""]
        return {r.choice(keys): self.value(depth + 1) for _ in range(r.randrange(4))}

    def small_image(self) -> list:
        return [[[0.5, 0.5, 0.5]]]

    def batch(self, n: int | None = None) -> list:
        n = n if n is not None else self.rng.randrange(1, 3)
        return [self.rng.choice(self.images) for _ in range(n)]

    def bin_data(self) -> str:
        """base64 text for ``binData``: a good 64x64 PNG or JPEG, or one that breaks a rule
        (wrong size, cut short, a header claiming a huge image, bytes that are no image,
        text that is no base64)."""
        r = self.rng
        pixels = np.asarray(self.images[0], dtype=np.float64)
        photo = _encoded(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8),
                         r.choice(["PNG", "JPEG"]))
        raw = r.choice([
            photo, photo,
            _encoded(np.zeros((r.randrange(1, 200), r.randrange(1, 200), 3), np.uint8), "PNG"),
            photo[: r.randrange(len(photo))], photo + b"\x00" * r.randrange(1, 100),
            _png_header(r.choice([64, 65, 20000, 2**31 - 1]), 64), bytes(r.randrange(100)),
        ])
        text = base64.b64encode(raw).decode()
        return r.choice([text, text, text[:-1], "!" + text, text + "====", text.replace("A", "-")])

    # ---- prediction bodies ---------------------------------------------------------
    def prediction(self) -> tuple[str, Any]:
        r = self.rng
        valid = {"data": {"ndarray": self.batch()}}
        choices: list[tuple[str, Callable[[], Any]]] = [
            ("valid ndarray", lambda: valid),
            ("valid tensor", lambda: {"data": {"tensor": {
                "shape": [1, *IMAGE_SHAPE],
                "values": [v for row in self.images[0] for px in row for v in px]}}}),
            ("valid with meta", lambda: {**valid, "meta": {"puid": r.choice(
                ["abc", 5, None, [1], {"a": 1}]), "tags": self.value()}}),
            ("meta not an object", lambda: {**valid, "meta": r.choice([[1], "x", 5, True])}),
            ("names", lambda: {"data": {**valid["data"], "names": self.value()}}),
            ("top-level not an object", lambda: r.choice([[], [1], "x", 5, None, True, 1.5])),
            ("no data", lambda: {r.choice(["strData", "binData", "jsonData", "x"]):
                                 self.value()}),
            ("binData photo", lambda: {"binData": self.bin_data()}),
            ("binData and data", lambda: {"binData": self.bin_data(), **valid}),
            ("data not an object", lambda: {"data": self.value()}),
            ("ndarray not a list", lambda: {"data": {"ndarray": self.scalar()}}),
            ("empty batch", lambda: {"data": {"ndarray": []}}),
            ("batch too large", lambda: {"data": {"ndarray": [self.small_image()]
                                                  * (MAX_BATCH + r.randrange(1, 50))}}),
            ("wrong image size", lambda: {"data": {"ndarray": [np.zeros(r.choice(
                [(32, 32, 3), (64, 64), (64, 64, 4), (64, 3), (1, 1, 3)])).tolist()]}}),
            ("one image, unwrapped", lambda: {"data": {"ndarray": self.images[0]}}),
            ("ragged batch", lambda: {"data": {"ndarray": [self.images[0],
                                                           self.small_image()]}}),
            ("out of range pixels", lambda: {"data": {"ndarray": [image(
                r, *r.choice([(-1.0, 0.5), (0.5, 2.0), (-1e30, 1e30)]))]}}),
            ("a pixel replaced", lambda: self._poke_pixel()),
            ("tensor lies", lambda: {"data": {"tensor": {
                "shape": r.choice([[1, 64, 64, 3], [2, 64, 64, 3], [-1, 64, 64, 3],
                                   [10**12, 64, 64, 3], [1, 64, 64], [], "x", [1.5, 64, 64, 3],
                                   [True, 64, 64, 3], None]),
                "values": r.choice([[0.5] * r.randrange(0, 20), "x", None, [[0.5]],
                                    [0.5] * 12288, ["a"] * 12288])}}}),
            ("both ndarray and tensor", lambda: {"data": {"ndarray": self.batch(1),
                                                          "tensor": {"shape": [1]}}}),
            ("random JSON", lambda: self.value()),
            ("unknown fields", lambda: {**valid, **{f"x{i}": self.value() for i in range(3)}}),
        ]
        what, make = r.choice(choices)
        return what, make()

    def _poke_pixel(self) -> Any:
        img = json.loads(json.dumps(self.images[0]))
        i, j, k = (self.rng.randrange(n) for n in IMAGE_SHAPE)
        img[i][j][k] = self.rng.choice([None, "0.5", True, [], {}, -0.0, 1, 0, 2**64])
        return {"data": {"ndarray": [img]}}

    # ---- feedback bodies -----------------------------------------------------------
    def feedback(self) -> tuple[str, Any]:
        r = self.rng
        # A fixed list of choices (the recent puids by position), so the draws, and the
        # requests after them, do not depend on how many puids the run has seen.
        recent = [*self.puids[-3:], *["0" * 32] * 3][:3]
        puid = r.choice([*recent, "0" * 32, "", "x" * 129, 5, None, ["a"], {"a": 1}])
        label = r.choice([0, 1, 2, -1, True, "good", "bad", "Good", [0, 1], [1, 0], [1],
                          [[1]], 1.0, None, {}, [0, 0], [1, 1], 10**40])
        choices: list[tuple[str, Callable[[], Any]]] = [
            ("short form", lambda: {"puid": puid, "label": label}),
            ("short form, labels", lambda: {"puid": puid, "labels": r.choice([
                [label], [0, 1], [], [0] * r.randrange(1, 5000), "01", None])}),
            ("short form, no label", lambda: {"puid": puid}),
            ("seldon form", lambda: {
                "request": r.choice([{"data": {"ndarray": self.batch(1)}}, self.value()]),
                "response": {"meta": {"puid": puid}},
                "truth": {"data": r.choice([{"ndarray": [label]}, {"ndarray": [[1], [1, 2]]},
                                            {"tensor": {"shape": [1, 2], "values": [1]}},
                                            self.value()])},
                "reward": r.choice([1, 0, -1, 0.5, "x", None, 1e308])}),
            ("seldon form, no truth", lambda: {"response": {"meta": {"puid": puid}}}),
            ("seldon form, bad response", lambda: {"response": r.choice(
                [[1], "x", {"meta": [1]}, {"meta": {"routing": "x"}}]), "truth": self.value()}),
            ("random JSON", lambda: self.value()),
        ]
        what, make = r.choice(choices)
        return what, make()

    # ---- bytes ---------------------------------------------------------------------
    def encode(self, obj: Any) -> tuple[str, bytes]:
        """The body's bytes, most often plain JSON, else one mangling of it."""
        r = self.rng
        text = json.dumps(obj)
        body = text.encode()
        roll = r.random()
        if roll < 0.55:
            return "", body
        options: list[tuple[str, Callable[[], bytes]]] = [
            ("NaN/Infinity literal", lambda: _replace_number(text, r, r.choice(
                ["NaN", "Infinity", "-Infinity"])).encode()),
            ("huge number", lambda: _replace_number(text, r, r.choice(
                ["1e400", "-1e400", "9" * r.choice([300, 4299, 4301, 20000]),
                 "1" + "0" * 400 + ".5", "-0"])).encode()),
            ("deep nesting", lambda: _nest(obj, r.choice([50, 900, 1100, 5000, 100000]), r)),
            ("truncated", lambda: body[:r.randrange(len(body))] if body else b"{"),
            ("trailing garbage", lambda: body + r.choice([b"x", b"}", b" {}", b"\x00",
                                                          b"\n\n\n", b",1"])),
            ("leading garbage", lambda: r.choice([b"\x00", b"x", b")]}'\n"]) + body),
            ("utf-16", lambda: text.encode(r.choice(["utf-16", "utf-16-le", "utf-16-be"]))),
            ("utf-32", lambda: text.encode("utf-32")),
            ("utf-8 BOM", lambda: b"\xef\xbb\xbf" + body),
            ("latin-1 text", lambda: _in_string(text, "caf\u00e9", r).encode("latin-1",
                                                                              "replace")),
            ("invalid utf-8", lambda: _in_bytes(body, r.choice(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]), r)),
            ("lone surrogate escape", lambda: _in_string(text, "\\ud800", r).encode()),
            ("control characters", lambda: _in_string(text, "\x00\x01\x1f", r).encode(
                "utf-8", "surrogatepass")),
            ("random bytes", lambda: r.randbytes(r.randrange(1, 2000))),
            ("empty", lambda: r.choice([b"", b" ", b"\n", b"\r\n\t "])),
            ("padded to the limit", lambda: body + b" " * max(
                0, MAX_BODY_BYTES - len(body) + r.choice([-1, 0, 1, 1000]))),
            ("single quotes", lambda: text.replace('"', "'").encode()),
            ("duplicate keys", lambda: (text[:-1] + ', "data": null}').encode()
             if text.startswith("{") and len(text) > 2 else body),
        ]
        what, make = r.choice(options)
        return what, make()

    # ---- whole requests ------------------------------------------------------------
    def case(self, index: int) -> Case:
        r = self.rng
        target = r.choice(["router", "model"])
        endpoint = "predictions" if r.random() < 0.65 else "feedback"
        if endpoint == "predictions":
            what, obj = self.prediction()
            paths = PREDICT_PATHS + (("/predict",) if target == "model" else ())
        else:
            what, obj = self.feedback()
            paths = FEEDBACK_PATHS + (("/send-feedback",) if target == "model" else ())
        mangled, body = self.encode(obj)
        case = Case(index, target, endpoint, f"{endpoint}: {what}"
                    + (f"; {mangled}" if mangled else ""), path=r.choice(paths), body=body)
        case.headers = [("Content-Type", "application/json")]
        if target == "router":
            case.headers.append(("Authorization", f"Bearer {TOKEN}"))
        roll = r.random()
        if roll < 0.12:
            self._headers(case)
        elif roll < 0.20:
            self._transport(case)
        elif roll < 0.27:
            self._raw(case)
        elif roll < 0.31:
            self._method_or_path(case)
        return case

    def _headers(self, case: Case) -> None:
        r = self.rng
        kind = r.choice(["content-type", "form", "multipart", "auth", "many", "long",
                         "accept"])
        case.what += f"; headers: {kind}"
        headers = [(k, v) for k, v in case.headers if k != "Content-Type"]
        if kind == "content-type":
            headers.append(("Content-Type", r.choice([
                "application/json; charset=utf-8", "application/json; charset=latin-1",
                "application/json; charset=bogus", "text/plain", "application/octet-stream",
                "", "application/jsonx", "*/*", "application/json, text/plain", "json",
                "application/x-www-form-urlencoded", "multipart/form-data",
                "application/json; boundary=\"x", "text/html; charset=\u00e9"])))
        elif kind == "form":
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            field_ = r.choice(["json", "data", "strData", "json"])
            case.body = urllib.parse.urlencode({field_: case.body.decode("latin-1")}).encode()
        elif kind == "multipart":
            boundary = "fuzzboundary"
            headers.append(("Content-Type", f"multipart/form-data; boundary={boundary}"))
            parts = []
            for name in r.sample(["data", "meta", "strData", "json", "binData", "x"], 2):
                as_file = r.random() < 0.4
                disposition = f'form-data; name="{name}"' + (
                    f'; filename="{name}.bin"' if as_file else "")
                content = r.choice([case.body, b"\xff\xfe", b"{bad", b'{"ndarray": [1]}'])
                parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n"
                             .encode() + content + b"\r\n")
            ending = r.choice([f"--{boundary}--\r\n".encode(), b"", b"--garbage"])
            case.body = b"".join(parts) + ending
        elif kind == "auth":
            headers = [(k, v) for k, v in headers if k != "Authorization"]
            choice = r.choice(["", "Bearer", "Bearer wrong", f"bearer {TOKEN}",
                               f"Bearer  {TOKEN}  ", f"Basic {TOKEN}", "Bearer " + "x" * 5000,
                               f"Bearer {TOKEN}\u00e9"])
            if choice:
                headers.append(("Authorization", choice))
            headers.append(("Content-Type", "application/json"))
        elif kind == "many":
            headers += [(f"X-Fuzz-{i}", "y" * r.randrange(1, 100)) for i in range(r.choice(
                [50, 99, 150]))]
            headers.append(("Content-Type", "application/json"))
        elif kind == "long":
            headers.append(("X-Long", "z" * r.choice([4000, 8190, 9000, 70000])))
            headers.append(("Content-Type", "application/json"))
        else:
            headers += [("Accept", r.choice(["text/html", "application/xml", "*/*", ""])),
                        ("Accept-Encoding", r.choice(["gzip", "br", "identity;q=0"])),
                        ("Content-Type", "application/json")]
        case.headers = headers

    def _transport(self, case: Case) -> None:
        r = self.rng
        kind = r.choice(["gzip", "bad gzip", "deflate", "unknown encoding", "chunked",
                         "gzip bomb"])
        case.what += f"; transport: {kind}"
        if kind == "gzip":
            case.body = gzip.compress(case.body, mtime=0)
            case.headers.append(("Content-Encoding", "gzip"))
        elif kind == "bad gzip":
            case.body = case.body[:200]
            case.headers.append(("Content-Encoding", r.choice(["gzip", "deflate", "br"])))
        elif kind == "deflate":
            case.body = zlib.compress(case.body)
            case.headers.append(("Content-Encoding", "deflate"))
        elif kind == "unknown encoding":
            case.headers.append(("Content-Encoding", r.choice(["zstd", "x-fuzz", "gzip, br"])))
        elif kind == "gzip bomb":
            case.body = gzip.compress(b"[" + b"0," * (8 * MAX_BODY_BYTES) + b"0]", mtime=0)
            case.headers.append(("Content-Encoding", "gzip"))
        else:
            case.chunked = True

    def _raw(self, case: Case) -> None:
        r = self.rng
        host = "127.0.0.1"
        body = case.body[:r.choice([0, 10, 1000, len(case.body)])]
        auth = f"Authorization: Bearer {TOKEN}\r\n" if case.target == "router" else ""
        head = f"POST {case.path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
        ctype = "Content-Type: application/json\r\n"
        kind = r.choice(["length too long", "length too short", "length not a number",
                         "two lengths", "bad chunk", "unterminated chunks",
                         "header bytes", "bad request line", "http/1.0", "no headers end",
                         "nul in header", "folded header"])
        case.what += f"; raw: {kind}"
        if kind == "length too long":
            raw = f"{head}{ctype}Content-Length: {len(body) + r.randrange(1, 5000)}\r\n\r\n"
            case.raw = raw.encode() + body
        elif kind == "length too short":
            raw = f"{head}{ctype}Content-Length: {max(0, len(body) - 5)}\r\n\r\n"
            case.raw = raw.encode() + body
        elif kind == "length not a number":
            value = r.choice(["abc", "-1", "1e3", "0x10", " 5", "99999999999999999999999"])
            case.raw = f"{head}{ctype}Content-Length: {value}\r\n\r\n".encode() + body
        elif kind == "two lengths":
            case.raw = (f"{head}{ctype}Content-Length: {len(body)}\r\n"
                        f"Content-Length: {len(body) + 1}\r\n\r\n").encode() + body
        elif kind == "bad chunk":
            case.raw = (f"{head}{ctype}Transfer-Encoding: chunked\r\n\r\n"
                        f"{r.choice(['zz', '-1', 'ffffffffffffffffff', '5;x'])}\r\n").encode() \
                + body[:5] + b"\r\n0\r\n\r\n"
        elif kind == "unterminated chunks":
            case.raw = (f"{head}{ctype}Transfer-Encoding: chunked\r\n\r\n"
                        f"{len(body):x}\r\n").encode() + body
        elif kind == "header bytes":
            case.raw = (head.encode() + b"X-Bytes: " + r.choice(
                [b"\xff\xfe", b"caf\xc3\xa9", b"\x80"]) + b"\r\n" + ctype.encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        elif kind == "bad request line":
            case.raw = r.choice([b"GARBAGE\r\n\r\n", b"POST\r\n\r\n",
                                 f"POST {case.path} HTTP/9.9\r\n\r\n".encode(),
                                 f"POST  {case.path}  HTTP/1.1\r\n\r\n".encode()])
        elif kind == "http/1.0":
            case.raw = (f"POST {case.path} HTTP/1.0\r\n{auth}{ctype}\r\n").encode() + body
        elif kind == "no headers end":
            case.raw = head.encode() + ctype.encode()
        elif kind == "nul in header":
            case.raw = head.encode() + b"X-Nul: a\x00b\r\n" + ctype.encode() + \
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        else:
            case.raw = head.encode() + b"X-Fold: a\r\n b\r\n" + ctype.encode() + \
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    def _method_or_path(self, case: Case) -> None:
        r = self.rng
        kind = r.choice(["method", "query", "path"])
        if kind == "method":
            case.method = r.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        elif kind == "query":
            value = r.choice(["{bad", "[1]", json.dumps({"data": {"ndarray": [[1]]}}),
                              "\u00e9", "%zz", "[" * 5000])
            case.path += "?" + urllib.parse.urlencode({r.choice(["json", "x"]): value})
            if r.random() < 0.5:
                case.method = "GET"
        else:
            case.path = r.choice([case.path + "/", "/" + case.path, case.path.upper(),
                                  case.path + "%00", "/api/v1.0/predictions/../feedback"])
        case.what += f"; {kind}: {case.method} {case.path[:60]}"


def _replace_number(text: str, rng: random.Random, literal: str) -> str:
    """``text`` with one of its numbers (or, lacking any, a value) replaced by ``literal``."""
    spots = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text)]
    if not spots:
        return text[:-1] + f', "n": {literal}}}' if text.endswith("}") else literal
    start, end = rng.choice(spots)
    return text[:start] + literal + text[end:]


def _in_string(text: str, insert: str, rng: random.Random) -> str:
    """``text`` with ``insert`` inside one of its strings (or a new one)."""
    spots = [i for i, c in enumerate(text) if c == '"']
    if not spots:
        return json.dumps({"s": "x"})[:-2] + insert + '"}'
    i = rng.choice(spots)
    return text[:i + 1] + insert + text[i + 1:]


def _in_bytes(body: bytes, insert: bytes, rng: random.Random) -> bytes:
    spots = [i for i, c in enumerate(body) if c == ord('"')] or [0]
    i = rng.choice(spots)
    return body[:i + 1] + insert + body[i + 1:]


def _nest(obj: Any, depth: int, rng: random.Random) -> bytes:
    """``obj`` with a value nested ``depth`` deep somewhere (arrays or objects)."""
    if rng.random() < 0.5:
        deep = b"[" * depth + b"1" + b"]" * depth
    else:
        deep = b'{"a":' * depth + b"1" + b"}" * depth
    if isinstance(obj, dict):
        return json.dumps(obj)[:-1].encode() + (b", " if obj else b"") + b'"deep": ' + deep + b"}"
    return deep
