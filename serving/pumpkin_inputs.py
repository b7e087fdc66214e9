"""The pumpkin model server's input contract: Seldon JSON messages to float32 images.

Three kinds of request are accepted, each answered 400 with a message naming what was
wrong when it breaks a rule (the client reading it is usually a person with curl):

- ``data.ndarray``: a list of images, each 64×64×3 numbers in [0, 1];
- ``data.tensor``: ``{"shape": [N, 64, 64, 3], "values": [...]}``, the same numbers flat;
- ``binData``: ONE photo per message, PNG or JPEG bytes (base64 in the JSON body, as
  Seldon's REST API carries ``bytes``; ``SeldonClient.predict(bin_data=...)`` sends it so),
  exactly 64×64 pixels: nothing is resized, because a resized photo is not what the model
  was trained on and the client should know. RGB, RGBA (alpha dropped), greyscale and
  palette images are converted to RGB; pixels are read as ``value / 255``. Seldon has no
  batch convention for ``binData`` and none is invented here: send a batch as ``ndarray``.

A ``binData`` answer is shaped like an ``ndarray`` one (``data.ndarray``: one row of
class probabilities), so a client reads both the same way. This module is its own file
so the rules can be tested without Seldon's server; the model-server image copies it
next to ``PumpkinModel.py``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np
from seldon_core.flask_utils import SeldonMicroserviceException

IMAGE_SHAPE = (64, 64, 3)
MAX_BATCH = 256
# A 64×64 photo is 12,288 pixel bytes; PNG/JPEG of it stays far below this. The bound
# stops a large file (or a decompression bomb's header) before Pillow reads it.
MAX_IMAGE_BYTES = 256 * 1024
IMAGE_FORMATS = ("PNG", "JPEG")
RGB_CONVERTIBLE = frozenset({"RGB", "RGBA", "L", "LA", "P"})


def bad_input(message: str, status_code: int = 400) -> SeldonMicroserviceException:
    """A client error in Seldon's error format (``status.info`` carries the message)."""
    return SeldonMicroserviceException(message, status_code=status_code, reason="TRELLIS_BAD_INPUT")


def images_from_request(message: object) -> tuple[np.ndarray, str]:
    """Validate a Seldon JSON request; the images as float32 (N, 64, 64, 3) in [0, 1] and
    the request's kind (``ndarray``, ``tensor`` or ``binData``)."""
    if not isinstance(message, dict):
        raise bad_input(f"request body must be a JSON object, got {type(message).__name__}")
    if "binData" in message:
        if "data" in message:
            raise bad_input('send either "data" or "binData", not both')
        return decode_bin_data(message["binData"])[None].astype(np.float32) / 255.0, "binData"
    data = message.get("data")
    if not isinstance(data, dict):
        raise bad_input('request needs a "data" object with "ndarray" or "tensor", '
                        'or "binData" with one PNG/JPEG photo')
    if "ndarray" in data:
        kind, raw = "ndarray", data["ndarray"]
        if not isinstance(raw, list):
            raise bad_input("data.ndarray must be a list of images")
        if not raw:
            raise bad_input("empty batch: data.ndarray has no images (need 1 to 256)")
        if len(raw) > MAX_BATCH:
            raise bad_input(f"batch of {len(raw)} images is too large; at most {MAX_BATCH}")
    elif "tensor" in data:
        kind, tensor = "tensor", data["tensor"]
        if not isinstance(tensor, dict):
            raise bad_input('data.tensor must be an object with "shape" and "values"')
        shape, raw = tensor.get("shape"), tensor.get("values")
        if not (isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise bad_input("data.tensor.shape must be a list of integers")
        if not isinstance(raw, list):
            raise bad_input("data.tensor.values must be a flat list of numbers")
        if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
            raise bad_input(f"expected shape (N, 64, 64, 3), got {tuple(shape)}")
        if not 1 <= shape[0] <= MAX_BATCH:
            raise bad_input(f"batch size {shape[0]} out of range: need 1 to {MAX_BATCH}")
        if len(raw) != math.prod(shape):
            raise bad_input(
                f"data.tensor.values has {len(raw)} values but shape {tuple(shape)} "
                f"needs {math.prod(shape)}"
            )
    else:
        raise bad_input('data must hold "ndarray" or "tensor" (or send "binData" with a '
                        "PNG/JPEG photo; strData is not accepted)")

    try:
        array = np.asarray(raw)
    except ValueError:
        raise bad_input(f"data.{kind} is ragged: the images do not all have one shape") from None
    if array.dtype.kind not in "iuf":
        what = "booleans" if array.dtype.kind == "b" else "non-numeric or null values"
        raise bad_input(f"data.{kind} holds {what} (numpy dtype {array.dtype}); send numbers")
    if kind == "tensor":
        array = array.reshape(shape)
    if array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
        hint = "; wrap a single image in a list" if array.shape == IMAGE_SHAPE else ""
        raise bad_input(f"expected shape (N, 64, 64, 3), got {array.shape}{hint}")
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise bad_input(f"{int(array.size - finite.sum())} non-finite values (NaN/Infinity)")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise bad_input(f"pixel values must lie in [0, 1]; got min={low:g}, max={high:g}")
    return array, kind


def decode_bin_data(encoded: Any) -> np.ndarray:
    """``binData`` (base64 text from JSON; base64 bytes from Seldon's multipart upload) as
    one uint8 (64, 64, 3) image, or a 400 saying which rule it broke."""
    if isinstance(encoded, bytes):
        encoded = encoded.decode("ascii", errors="replace")
    if not isinstance(encoded, str):
        raise bad_input(f"binData must be a base64 string, got {type(encoded).__name__}")
    limit = 4 * math.ceil(MAX_IMAGE_BYTES / 3)
    if len(encoded) > limit:
        raise bad_input(f"binData of {len(encoded)} base64 characters is too large: one "
                        f"64x64 photo is at most {MAX_IMAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_input(f"binData is not valid base64: {exc}") from None
    if not raw:
        raise bad_input("binData is empty; send one PNG or JPEG photo")
    return decode_image(raw)


def decode_image(raw: bytes) -> np.ndarray:
    """PNG/JPEG bytes of one 64×64 photo as uint8 (64, 64, 3); the size is checked from the
    header before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > MAX_IMAGE_BYTES:
        raise bad_input(f"binData holds {len(raw)} bytes, too many: one 64x64 photo is at "
                        f"most {MAX_IMAGE_BYTES} bytes")
    try:
        image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # a header claiming a giant image
        raise bad_input(f"binData image is far larger than 64x64: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise bad_input(f"binData is not a PNG or JPEG image (it starts with {raw[:8]!r})") \
            from None
    with image:
        if image.size != IMAGE_SHAPE[1::-1]:
            raise bad_input(f"binData is a {image.width}x{image.height} {image.format} image; "
                            "expected exactly 64x64 (photos are not resized)")
        if image.mode not in RGB_CONVERTIBLE:
            raise bad_input(f"binData {image.format} image has mode {image.mode}; "
                            f"send RGB, RGBA, greyscale (L) or palette (P)")
        try:
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
            raise bad_input(f"binData {image.format} image is corrupt: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)
