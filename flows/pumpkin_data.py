"""Synthetic pumpkin photos for the Trellis running example (numpy only).

Good pumpkins are round, ribbed and evenly coloured with a stem; bad ones carry rot
spots, dents or patches (dark bruises; pale mould on white pumpkins). ``variety``
switches between classic orange pumpkins and the pale, genetically modified white ones
that make the live data drift. A fraction of the photos townsfolk send are watermelons
(green, striped), which the flow's ``verify`` step must drop.

All randomness is drawn per photo up front from one seeded generator, then the photos
are rendered in small chunks (vectorised, cache-sized), so the same arguments always give
the same arrays and the dataset fingerprint is reproducible. Images are
``(n, size, size, 3)`` float32 in ``[0, 1]``; labels are 0 = bad, 1 = good
(``CLASS_NAMES``) and -1 for watermelons, which are neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("bad", "good")
VARIETIES = ("orange", "white", "mixed")
DEFECTS = ("none", "rot", "dent", "patch")
NOT_A_PUMPKIN = -1
MAX_SPOTS = 4
_CHUNK = 128
_F32 = np.float32

# Body colours (RGB). Orange pumpkins range from red-orange to yellow-orange (``_HUE``
# scales the green and blue channels), so a model must judge shapes and darkness, not
# one exact hue. Rot is near-black on both varieties; white pumpkins bruise into a
# pale grey-green mould instead of a dark patch: what an orange-only model never saw.
_ORANGE, _HUE, _WHITE = (0.93, 0.52, 0.10), (0.0, 0.12, 0.06), (0.90, 0.88, 0.80)
_ROT, _MOULD = (0.22, 0.12, 0.04), (0.66, 0.74, 0.60)
_MELON_LIGHT, _MELON_DARK = (0.30, 0.62, 0.25), (0.07, 0.30, 0.10)
_STEM = (0.36, 0.30, 0.12)
# Backgrounds are never green, so "mostly green" means watermelon.
_BACKGROUNDS = np.array(
    [
        [0.55, 0.42, 0.30],  # soil
        [0.80, 0.72, 0.50],  # straw
        [0.62, 0.62, 0.64],  # concrete
        [0.58, 0.70, 0.85],  # sky
        [0.45, 0.32, 0.22],  # wooden crate
    ],
    dtype=_F32,
)


@dataclass(frozen=True)
class PumpkinBatch:
    """A generated batch with the ground truth the generator knows about each photo."""

    x: np.ndarray  # (n, size, size, 3) float32 in [0, 1]
    y: np.ndarray  # (n,) int64: 0 bad, 1 good, -1 watermelon
    is_watermelon: np.ndarray  # (n,) bool
    is_white: np.ndarray  # (n,) bool (white variety; False for watermelons)
    defect: np.ndarray  # (n,) int8 index into DEFECTS


def generate(
    n: int,
    seed: int = 0,
    variety: str = "orange",
    white_fraction: float = 0.5,
    watermelon_fraction: float = 0.0,
    good_fraction: float = 0.5,
    size: int = 64,
) -> PumpkinBatch:
    """Render ``n`` photos. ``white_fraction`` only applies to ``variety="mixed"``."""
    if variety not in VARIETIES:
        raise ValueError(f"variety must be one of {VARIETIES}, got {variety!r}")
    for name, value in (
        ("white_fraction", white_fraction),
        ("watermelon_fraction", watermelon_fraction),
        ("good_fraction", good_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")

    rng = np.random.default_rng(seed)
    white_p = {"orange": 0.0, "white": 1.0, "mixed": white_fraction}[variety]
    p = _draw(rng, n, white_p, watermelon_fraction, good_fraction)
    noise = rng.standard_normal((64, size, size, 3), dtype=_F32) * _F32(0.02)
    noise = np.concatenate([noise, noise[:, :, ::-1]])  # mirrored grain: 128 patterns
    x = np.empty((n, size, size, 3), _F32)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        x[sl] = _render({k: v[sl] for k, v in p.items()}, size, noise)
    melon, white, defect = p["melon"], p["white"], p["defect"]
    y = np.where(melon, NOT_A_PUMPKIN, (defect == 0).astype(np.int64))
    return PumpkinBatch(x=x, y=y, is_watermelon=melon, is_white=white, defect=defect)


def _draw(
    rng: np.random.Generator, n: int, white_p: float, melon_p: float, good_p: float
) -> dict[str, np.ndarray]:
    """Every random choice for every photo, so rendering itself is deterministic."""
    melon = rng.random(n) < melon_p
    white = (rng.random(n) < white_p) & ~melon
    good = (rng.random(n) < good_p) | melon
    defect = np.where(good, 0, rng.integers(1, len(DEFECTS), n)).astype(np.int8)

    def u(lo: float, hi: float, shape: int | tuple[int, ...] = n) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(_F32)

    orange = np.add(_ORANGE, np.multiply.outer(rng.uniform(-1, 1, n), _HUE))
    body = np.where(white[:, None], _WHITE, orange)
    spot_angle, spot_dist = u(0, 2 * np.pi, (n, MAX_SPOTS)), np.sqrt(u(0, 1, (n, MAX_SPOTS)))
    return {
        "melon": melon,
        "white": white,
        "defect": defect,
        "bg": _BACKGROUNDS[rng.integers(0, len(_BACKGROUNDS), n)] * u(0.85, 1.1, (n, 1)),
        "tilt": u(-0.004, 0.004),
        "cx": u(27, 37),
        "cy": u(30, 38),
        "rx": u(18, 24),
        "aspect": np.where(melon, u(0.6, 1.0), u(0.75, 0.92)).astype(_F32),
        "body": (body + rng.normal(0, 0.025, (n, 3))).astype(_F32),
        "ribs": rng.integers(3, 6, n).astype(_F32),
        "groove": u(0.10, 0.22),
        "stripes": u(9, 14),
        "wave_f": u(2, 5),
        "wave_p": u(0, 6),
        "n_spots": np.where(defect == 1, rng.integers(1, MAX_SPOTS + 1, n), 0),
        "spot_u": spot_dist * 0.65 * np.cos(spot_angle),
        "spot_v": spot_dist * 0.65 * np.sin(spot_angle),
        "spot_r": u(0.12, 0.26, (n, MAX_SPOTS)),
        "dent_angle": u(0, np.pi),
        "dent_u": u(-0.35, 0.35),
        "dent_v": u(-0.35, 0.35),
        "patch_u": u(-0.3, 0.3),
        "patch_v": u(-0.3, 0.3),
        "patch_r": u(0.3, 0.45),
        "patch_phase": u(0, 6),
        "exposure": u(0.85, 1.08),
        "stem_w": u(1.5, 3.0),
        "stem_h": u(4.0, 7.0),
        "noise": rng.integers(0, 128, n),
    }


def _render(p: dict[str, np.ndarray], size: int, noise: np.ndarray) -> np.ndarray:
    """Draw one chunk of photos from their parameters.

    Defects and watermelon rinds are computed only for the photos that have them
    (index subsets), which keeps the whole batch cheap.
    """

    def c(name: str, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        return p[name][idx][:, None, None]  # (m,) -> (m, 1, 1) to broadcast over pixels

    coords = np.arange(size, dtype=_F32) * _F32(64.0 / size)
    yy, xx = coords[None, :, None], coords[None, None, :]
    melon, defect = p["melon"], p["defect"]

    # Fruit geometry: a flattened ellipse with a soft edge, 3D shading and rib grooves.
    rx = c("rx")
    ry = rx * c("aspect")
    u, v = (xx - c("cx")) / rx, (yy - c("cy")) / ry
    rr = np.sqrt(u * u + v * v)
    inside = rr < 1.0
    alpha = np.clip((1.0 - rr) * rx / 1.5, 0.0, 1.0)
    lum = 0.62 + 0.38 * np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0))
    pumpkin = np.flatnonzero(~melon)
    lum[pumpkin] *= 1.0 - c("groove", pumpkin) * np.abs(
        np.cos(np.pi * c("ribs", pumpkin) * u[pumpkin] / 2)
    ) ** 6

    fruit = np.empty((len(melon), size, size, 3), _F32)
    fruit[:] = p["body"][:, None, None, :]
    if (i := np.flatnonzero(melon)).size:  # green rind with dark, wavy stripes
        ui, vi = u[i], v[i]
        wave = vi + 0.12 * np.sin(c("wave_f", i) * ui + c("wave_p", i))
        stripe = np.sin(c("stripes", i) * wave) > 0.2
        fruit[i] = np.where(stripe[..., None], _F32(_MELON_DARK), _F32(_MELON_LIGHT))
    if (i := np.flatnonzero(p["n_spots"] > 0)).size:  # rot: blend towards the rot colour
        ui, vi, rot = u[i], v[i], np.zeros((i.size, size, size), _F32)
        for k in range(MAX_SPOTS):
            d = np.hypot(ui - p["spot_u"][i, k, None, None], vi - p["spot_v"][i, k, None, None])
            r_k = (p["spot_r"][i, k] * (p["n_spots"][i] > k))[:, None, None]
            np.maximum(rot, np.clip((r_k - d) / 0.06, 0.0, 1.0), out=rot)
        rot = (rot * inside[i])[..., None]
        fruit[i] += rot * (_F32(_ROT) - fruit[i])
    if (i := np.flatnonzero(defect == 2)).size:  # dent: a hollow, darker on one side
        du, dv = u[i] - c("dent_u", i), v[i] - c("dent_v", i)
        ca, sa = np.cos(c("dent_angle", i)), np.sin(c("dent_angle", i))
        a, b = du * ca + dv * sa, dv * ca - du * sa
        hollow = np.clip((1.0 - (a / 0.42) ** 2 - (b / 0.16) ** 2) / 0.25, 0.0, 1.0)
        lum[i] *= 1.0 - hollow * inside[i] * np.where(b < 0, _F32(0.62), _F32(0.4))
    if (i := np.flatnonzero(defect == 3)).size:  # patch: a bruise with a mottled edge
        ui, vi, phase = u[i], v[i], c("patch_phase", i)
        mottle = 0.07 * np.sin(7 * ui + phase) * np.cos(6 * vi + phase)
        d = np.hypot(ui - c("patch_u", i), vi - c("patch_v", i))
        patch = np.clip((c("patch_r", i) + mottle - d) / 0.06, 0.0, 1.0) * inside[i]
        white = p["white"][i]
        lum[i[~white]] *= 1.0 - patch[~white] * _F32(0.58)  # dark bruise
        mould = patch[white][..., None]
        fruit[i[white]] += mould * (_F32(_MOULD) - fruit[i[white]])  # pale grey-green
    fruit *= (lum * c("exposure"))[..., None]

    # Compose: background with a lighting tilt, the fruit, the stem, sensor grain.
    img = p["bg"][:, None, None, :] + (c("tilt") * (yy + xx - 64.0))[..., None]
    img += alpha[..., None] * (fruit - img)
    top = c("cy") - ry
    stem = (np.abs(xx - c("cx")) < c("stem_w")) & (yy > top - c("stem_h")) & (yy < top + 2.5)
    img[stem & ~melon[:, None, None]] = _STEM
    img += noise[p["noise"]]
    return np.clip(img, 0.0, 1.0, out=img)


def find_invalid(x: np.ndarray) -> np.ndarray:
    """Photos no model should see: non-finite, out of [0, 1], or blank (no contrast)."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images of shape (n, h, w, 3), got {x.shape}")
    flat = x.reshape(len(x), -1)
    finite = np.isfinite(flat).all(axis=1)
    safe = np.where(np.isfinite(flat), flat, 0.0)
    in_range = (safe >= -1e-6).all(axis=1) & (safe <= 1.0 + 1e-6).all(axis=1)
    blank = safe.std(axis=1) < 0.02
    return ~finite | ~in_range | blank


def detect_watermelons(x: np.ndarray, min_green: float = 0.12) -> np.ndarray:
    """Flag photos where a large share of pixels is clearly green (green > red and blue).

    No background or pumpkin variety is green, so a cheap colour rule is enough and it
    needs no model: ``verify`` can run it before any model exists.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    green = (g > r + 0.08) & (g > b + 0.05)
    return green.reshape(len(x), -1).mean(axis=1) > min_green


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Quantise ``[0, 1]`` floats to uint8, the format live inputs are logged in."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def from_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 pixels back to float32 in ``[0, 1]``."""
    return x.astype(np.float32) / np.float32(255.0)
