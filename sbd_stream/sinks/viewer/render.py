"""Frames to PNG for the live viewer: binning, percentile contrast, a diverging map for LLR, a tiny encoder.

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
    a = np.asarray(data, dtype=np.float32)
    f = max(1, -(-max(a.shape) // max(1, max_side)))
    if f == 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


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


def diverging_rgb(a: np.ndarray, hi_pct: float) -> np.ndarray:
    """Symmetric about 0: the limit is the ``hi_pct`` percentile of |x| over the non-zero pixels."""
    nz = np.abs(a[np.isfinite(a) & (a != 0)])
    lim = float(np.percentile(nz, hi_pct)) if nz.size else 1.0
    lim = lim if lim > 0 else 1.0
    idx = np.clip((np.nan_to_num(a) / lim + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return _LUT[idx]


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """8-bit grayscale (H, W) or RGB (H, W, 3) PNG, filter type 0, fast zlib level."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        color, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        color, channels = 2, 3
    else:
        raise ValueError(f"need (H, W) or (H, W, 3), got {img.shape}")
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
