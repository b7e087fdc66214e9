"""The platform bench's binData-vs-ndarray serving rows compare the same photo."""

from __future__ import annotations

import json

import numpy as np

from bench import platform_bench
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
