"""Seldon's own client sending photos as ``binData``; run with the serving environment's Python.

    python seldon_client_bindata.py HOST:PORT NAMESPACE NAME IMAGES.npy

For each image (uint8 (n, 64, 64, 3)) it predicts twice through the ``seldon`` gateway:
once with ``bin_data=`` PNG bytes (``SeldonClient`` base64-encodes them into the JSON
body's ``binData``), once with the same pixels as an ``ndarray`` of values / 255. stdout:
a JSON list of ``{"bin": answer, "ndarray": answer, "bin_msg": ..., "nd_msg": ...}``.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
from google.protobuf import json_format
from PIL import Image
from seldon_core.seldon_client import SeldonClient


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    endpoint, namespace, name, images_path = sys.argv[1:5]
    images = np.load(images_path)
    client = SeldonClient(gateway="seldon", transport="rest", gateway_endpoint=endpoint,
                          deployment_name=name, namespace=namespace,
                          client_return_type="proto")
    report = []
    for pixels in images:
        sent = client.predict(bin_data=png(pixels))
        plain = client.predict(data=pixels[None].astype(np.float64) / 255.0,
                               payload_type="ndarray")
        report.append({
            "bin_success": sent.success, "bin_msg": sent.msg,
            "bin": json_format.MessageToDict(sent.response) if sent.response else None,
            "nd_success": plain.success,
            "ndarray": json_format.MessageToDict(plain.response) if plain.response else None,
        })
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
