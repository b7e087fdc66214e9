"""The model server's ``binData`` rules (``serving/pumpkin_inputs.py``) and the router's
decode of the same photos for its log.

``pumpkin_inputs`` needs seldon-core, which lives in ``.venv-serving`` only, so the cases
are built here and judged by one process of that environment's Python.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from controller.paths import ROOT
from controller.serving.cloudevents import request_record
from controller.serving.inbox import decode_object
from controller.serving.router_config import bin_data_uint8, images_uint8

SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
JUDGE = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from pumpkin_inputs import images_from_request
from seldon_core.flask_utils import SeldonMicroserviceException
out = []
for message in json.load(sys.stdin):
    try:
        images, kind = images_from_request(message)
    except SeldonMicroserviceException as exc:
        out.append({"status": exc.status_code, "info": exc.message})
        continue
    u8 = (images * 255.0).round().astype("uint8")
    out.append({"status": 200, "kind": kind, "shape": list(images.shape),
                "dtype": str(images.dtype), "max": float(images.max()),
                "sha": hashlib.sha256(u8.tobytes()).hexdigest()})
json.dump(out, sys.stdout)
"""


def photo(size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "PNG",
          seed: int = 0) -> bytes:
    """A random photo encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def judge(messages: list[object]) -> list[dict]:
    if not SERVING_PYTHON.exists():
        pytest.skip("no .venv-serving (make install)")
    run = subprocess.run([str(SERVING_PYTHON), "-c", JUDGE, str(ROOT / "serving")],
                         input=json.dumps(messages), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def sha(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def test_bin_data_rules_and_their_messages() -> None:
    png, jpeg = photo(), photo(fmt="JPEG")
    cases: list[tuple[object, int, str]] = [
        ({"binData": b64(png)}, 200, ""),
        ({"binData": b64(jpeg)}, 200, ""),
        ({"binData": b64(photo(mode="RGBA"))}, 200, ""),
        ({"binData": b64(photo(mode="L"))}, 200, ""),
        ({"binData": b64(b"\x00garbage bytes, not a photo" * 4)}, 400, "not a PNG or JPEG"),
        ({"binData": b64(b"GIF89a" + bytes(64))}, 400, "not a PNG or JPEG"),
        ({"binData": b64(png[:60])}, 400, "binData"),  # header only: corrupt or unreadable
        ({"binData": b64(photo(size=(32, 32)))}, 400, "32x32 PNG image; expected exactly 64x64"),
        ({"binData": b64(photo(size=(64, 65), fmt="JPEG"))}, 400, "64x65 JPEG"),
        ({"binData": "not base64 at all!"}, 400, "not valid base64"),
        ({"binData": ""}, 400, "binData is empty"),
        ({"binData": 42}, 400, "must be a base64 string, got int"),
        ({"binData": "A" * 400_000}, 400, "too large"),
        ({"binData": b64(png), "data": {"ndarray": []}}, 400, 'either "data" or "binData"'),
        ({"strData": "pumpkin"}, 400, '"binData" with one PNG/JPEG photo'),
    ]
    got = judge([message for message, _, _ in cases])
    for (message, status, text), answer in zip(cases, got, strict=True):
        assert answer["status"] == status, (str(message)[:80], answer)
        if status == 400:
            assert text in answer["info"], (str(message)[:80], answer)
        else:
            assert answer["kind"] == "binData" and answer["shape"] == [1, 64, 64, 3], answer
            assert answer["dtype"] == "float32" and answer["max"] <= 1.0, answer


def test_model_and_router_decode_a_photo_to_the_same_pixels() -> None:
    """The log keeps the pixels the model saw: both sides decode with Pillow to RGB."""
    photos = [photo(seed=1), photo(fmt="JPEG", seed=2), photo(mode="RGBA", seed=3),
              photo(mode="L", seed=4)]
    got = judge([{"binData": b64(p)} for p in photos])
    for raw, answer in zip(photos, got, strict=True):
        pixels = images_uint8({"binData": b64(raw)})
        assert pixels.shape == (1, 64, 64, 3) and pixels.dtype == np.uint8
        assert answer["sha"] == sha(pixels)
    rgb = np.asarray(Image.open(io.BytesIO(photos[0])))
    assert np.array_equal(images_uint8({"binData": b64(photos[0])})[0], rgb)  # PNG: lossless


def test_router_decode_refuses_what_is_not_one_photo() -> None:
    for bad in (b64(b"garbage"), "%%%", b64(photo(size=(8, 8)))):
        with pytest.raises(ValueError, match="binData"):
            bin_data_uint8(bad)


def test_receiver_keeps_bin_data_requests_as_pixels() -> None:
    """Cluster mode: the executor's request event carries the JSON as sent; the inbox
    line holds the decoded uint8 pixels, as for an ndarray request."""
    raw = photo(seed=5)
    line = request_record("rid-1", 1.0, {"binData": b64(raw)})
    records, bad = decode_object("s3://b/k", line)
    assert bad == 0 and len(records) == 1
    assert np.array_equal(records[0].images()[0], np.asarray(Image.open(io.BytesIO(raw))))
    with pytest.raises(ValueError, match="binData"):
        request_record("rid-2", 1.0, {"strData": "x"})
