"""Frames to PNG for the live viewer: cropping, binning, a diverging map for LLR, a tiny encoder.

Why not Pillow or matplotlib: an 8-bit PNG is a dozen lines of zlib, and the viewer must not pull a
plotting stack into a service that runs next to a microscope. Frames are block-averaged down to a
display size first, so a 14 Mpx K2 frame costs about as much as a 0.6 Mpx one to show.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

MAX_SIDE_DEFAULT = 768


def bin_to(data: np.ndarray, max_side: int) -> np.ndarray:
    """Block-mean by the smallest integer factor that brings both sides to <= ``max_side``."""
    return bin_by(data, max(1, -(-max(data.shape) // max(1, max_side))))


def bin_by(data: np.ndarray, f: int) -> np.ndarray:
    """Block-mean by ``f`` (a remainder strip at the bottom / right is left out)."""
    a = np.asarray(data, dtype=np.float32)
    if f == 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def crop_for_display(
    data: np.ndarray, region: tuple[int, int, int, int] | None, side: int
) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
    """Crop ``(x0, y0, x1, y1)`` (frame pixels, clamped) and block-mean it to at most ``side`` per side.

    Returns the image, the region it really covers (trimmed to whole bins) and the bin factor; a region
    no larger than ``side`` comes back at 1:1, i.e. at the frame's full resolution.
    """
    h, w = data.shape
    x0, y0, x1, y1 = region if region is not None else (0, 0, w, h)
    x0, x1 = sorted((min(max(int(x0), 0), w), min(max(int(x1), 0), w)))
    y0, y1 = sorted((min(max(int(y0), 0), h), min(max(int(y1), 0), h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"region {region} lies outside the {w} x {h} frame")
    f = max(1, -(-max(x1 - x0, y1 - y0) // max(1, side)))
    x1, y1 = x0 + max(1, (x1 - x0) // f) * f, y0 + max(1, (y1 - y0) // f) * f
    if x1 > w or y1 > h:  # a region thinner than one bin at the frame's edge: show it unbinned
        x1, y1, f = min(x1, w), min(y1, h), 1
    return bin_by(data[y0:y1, x0:x1], f), (x0, y0, x1, y1), f


def check_percentiles(lo: float, hi: float) -> tuple[float, float]:
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"need 0 <= lo < hi <= 100, got lo={lo} hi={hi}")
    return lo, hi


def gray8(a: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    """Clip to the [lo, hi] percentiles and scale to 0..255."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    vlo, vhi = np.percentile(finite, [lo_pct, hi_pct])
    if vhi <= vlo:
        vhi = vlo + 1e-6
    out = (np.nan_to_num(a, nan=vlo) - vlo) * (255.0 / (vhi - vlo))
    return np.clip(out, 0, 255).astype(np.uint8)


def _diverging_lut() -> np.ndarray:
    """256 RGB entries: blue (against a column) - near black (no evidence / no column) - yellow (for)."""
    anchors = np.array(
        [
            [0.0, 120, 220, 255],
            [0.35, 30, 80, 200],
            [0.5, 18, 18, 22],
            [0.65, 200, 60, 20],
            [1.0, 255, 235, 90],
        ],
        dtype=np.float64,
    )
    x = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(x, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], axis=1)
    return lut.astype(np.uint8)


_LUT = _diverging_lut()


def llr_limit(a: np.ndarray, hi_pct: float, max_side: int = MAX_SIDE_DEFAULT) -> float:
    """Colour limit: the ``hi_pct`` percentile of |LLR| over painted (non-zero) pixels of the whole frame.

    A strided subsample is enough (the map is constant over each column's disk) and keeps this cheap
    for K2 frames; computed on the whole frame so the colour bar does not change when zooming.
    """
    step = max(1, -(-max(a.shape) // max_side))
    sub = np.asarray(a[::step, ::step], np.float32)
    nz = np.abs(sub[np.isfinite(sub) & (sub != 0)])
    lim = float(np.percentile(nz, hi_pct)) if nz.size else 1.0
    return lim if lim > 0 else 1.0


def diverging_rgb(a: np.ndarray, hi_pct: float, limit: float | None = None) -> np.ndarray:
    """Symmetric about 0: ``limit``, or the ``hi_pct`` percentile of |x| over the non-zero pixels."""
    lim = llr_limit(a, hi_pct, max(a.shape)) if limit is None else limit
    idx = np.clip((np.nan_to_num(a) / lim + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return _LUT[idx]


def diverging_rgba(a: np.ndarray, limit: float) -> np.ndarray:
    """The same colours with alpha 0 where no column was painted (LLR exactly 0), for an overlay."""
    rgb = diverging_rgb(a, 100.0, limit)
    alpha = np.where(np.isfinite(a) & (a != 0), 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """8-bit grayscale (H, W), RGB (H, W, 3) or RGBA (H, W, 4) PNG, filter type 0, fast zlib level."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        color, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        color, channels = (2, 3) if img.shape[2] == 3 else (6, 4)
    else:
        raise ValueError(f"need (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    h, w = img.shape[:2]
    rows = np.zeros((h, 1 + w * channels), np.uint8)  # leading 0 = no filter on each scanline
    rows[:, 1:] = img.reshape(h, w * channels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def render(
    data: np.ndarray, kind: str, lo_pct: float, hi_pct: float, max_side: int = MAX_SIDE_DEFAULT
) -> bytes:
    """PNG of one frame for the page: gray for raw / denoised counts, diverging colours for LLR."""
    check_percentiles(lo_pct, hi_pct)
    a = bin_to(data, max_side)
    img = diverging_rgb(a, hi_pct) if kind == "llr" else gray8(a, lo_pct, hi_pct)
    return encode_png(img)
