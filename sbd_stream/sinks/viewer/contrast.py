"""Contrast windows that keep vacuum, support and particle from sharing one grey scale.

Why: a frame that is 3/4 vacuum has a histogram dominated by vacuum, so a percentile window over the
whole frame is spent on flat vacuum and its noise, and a Pt particle (strong contrast) squeezes the
CeO2 support's lattice into a few grey levels. Three modes (``contrast=`` on the image request):

- ``specimen`` (default): percentiles over the **specimen** pixels of what is shown; vacuum is left out.
  Vacuum is found on the denoised frame as the vacuum estimator of the likelihood stage does
  (docs/likelihood.md): blocks of ~5 A, the 10 % flattest are the reference, and a block is vacuum if it
  is about as flat as they are *and* at their level. A flat block at another level (thick amorphous
  carbon) stays specimen. A frame with no vacuum simply yields the flattest crystal as "vacuum", which
  only leaves the most structured parts to set the window.
- ``local``: each tile of ~20 A gets its own window (percentiles of its pixels), blended bilinearly
  between tile centres, so particle and support each use the full grey range. Windows are never
  narrower than a quarter of the specimen window, and vacuum tiles use the specimen window, so flat
  vacuum is not stretched into noise. Grey levels then do not compare across the frame: use it to see
  lattices, not to compare intensities.
- ``frame``: percentiles over every pixel shown (the old behaviour).
"""

from __future__ import annotations

import numpy as np

MODES = ("specimen", "local", "frame")
VACUUM_BLOCK_A = 5.0
LOCAL_TILE_A = 20.0


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"contrast must be one of {', '.join(MODES)}, got {mode[:20]!r}")
    return mode


def specimen_grid(img: np.ndarray, block: int) -> np.ndarray:
    """Boolean grid, one entry per ``block`` x ``block`` block of ``img``: True = specimen, False = vacuum."""
    h, w = img.shape
    block = max(2, min(block, h, w))
    ny, nx = max(1, h // block), max(1, w // block)
    b = np.asarray(img[: ny * block, : nx * block], np.float32).reshape(ny, block, nx, block)
    std, mean = b.std(axis=(1, 3)), b.mean(axis=(1, 3))
    k = max(1, int(0.1 * std.size))
    ref = np.argsort(std.ravel(), kind="stable")[:k]
    s0 = float(np.median(std.ravel()[ref]))
    m0 = float(np.median(mean.ravel()[ref]))
    flat = std <= 2.0 * s0 + 1e-6 * abs(m0)
    at_vacuum_level = np.abs(mean - m0) <= 3.0 * s0 + 0.02 * abs(m0)
    return ~(flat & at_vacuum_level)


def grid_to_region(
    grid: np.ndarray,
    grid_frac: tuple[float, float],
    region_frac: tuple[float, float, float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """The grid's mask sampled at the pixel centres of a region image.

    ``grid_frac``: the height and width of one grid block as fractions of the frame; ``region_frac``:
    (y0, x0, y1, x1) of the region as fractions of the frame; ``shape``: the region image's shape.
    Works across pixel sizes: the mask of a denoised frame at the working pixel applies to the raw frame.
    """
    y0, x0, y1, x1 = region_frac
    h, w = shape
    fy = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    fx = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    iy = np.clip((fy / grid_frac[0]).astype(int), 0, grid.shape[0] - 1)
    ix = np.clip((fx / grid_frac[1]).astype(int), 0, grid.shape[1] - 1)
    return grid[np.ix_(iy, ix)]


def window(
    a: np.ndarray, lo_pct: float, hi_pct: float, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """Percentile window of ``a`` over ``mask`` (all finite pixels if the mask selects under 2 %)."""
    ok = np.isfinite(a)
    sel = a[ok & mask] if mask is not None and (ok & mask).mean() >= 0.02 else a[ok]
    if sel.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sel, [lo_pct, hi_pct]))
    return lo, hi if hi > lo else lo + 1e-6


def local_windows(
    a: np.ndarray, lo_pct: float, hi_pct: float, tile: int, base: tuple[float, float], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (lo, hi) maps: tile windows blended bilinearly; see the module docstring for the floors."""
    h, w = a.shape
    tile = max(8, min(tile, h, w))
    ny, nx = max(1, round(h / tile)), max(1, round(w / tile))
    ey, ex = np.linspace(0, h, ny + 1).astype(int), np.linspace(0, w, nx + 1).astype(int)
    lo_t, hi_t = np.empty((ny, nx)), np.empty((ny, nx))
    floor = 0.25 * (base[1] - base[0])
    for i in range(ny):
        for j in range(nx):
            t = a[ey[i] : ey[i + 1], ex[j] : ex[j + 1]]
            m = None if mask is None else mask[ey[i] : ey[i + 1], ex[j] : ex[j + 1]]
            if m is not None and m.mean() < 0.25:  # mostly vacuum: the specimen window
                lo_t[i, j], hi_t[i, j] = base
                continue
            lo, hi = window(t, lo_pct, hi_pct)
            if hi - lo < floor:
                mid = 0.5 * (lo + hi)
                lo, hi = mid - floor / 2, mid + floor / 2
            lo_t[i, j], hi_t[i, j] = lo, hi
    cy, cx = 0.5 * (ey[:-1] + ey[1:]), 0.5 * (ex[:-1] + ex[1:])
    py, px = np.arange(h) + 0.5, np.arange(w) + 0.5

    def blend(t: np.ndarray) -> np.ndarray:
        rows = np.stack([np.interp(px, cx, t[i]) for i in range(ny)])  # (ny, w)
        return np.stack([np.interp(py, cy, rows[:, k]) for k in range(w)], axis=1)

    return blend(lo_t), blend(hi_t)


def to_gray8(a: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Scale to 0..255 between ``lo`` and ``hi`` (scalars or per-pixel maps), NaN as ``lo``."""
    span = np.maximum(np.asarray(hi, np.float32) - lo, 1e-6)
    out = np.nan_to_num(a - lo, nan=0.0) * (255.0 / span)
    return np.clip(out, 0, 255).astype(np.uint8)
