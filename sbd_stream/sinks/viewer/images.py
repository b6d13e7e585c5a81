"""One image request of the page: a region of a frame, its contrast window, the PNG, and what it shows.

Runs in the HTTP request threads, only when the page asks, never on the pipeline's threads. Costs are
bounded by the display size (``side`` <= ``max_side``), and the per-frame parts (the vacuum mask of a
denoised frame, the LLR colour limit) are computed once per frame and cached.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sbd_stream.sinks.viewer.contrast import (
    LOCAL_TILE_A,
    VACUUM_BLOCK_A,
    grid_to_region,
    local_windows,
    specimen_grid,
    to_gray8,
    window,
)
from sbd_stream.sinks.viewer.render import (
    bin_to,
    crop_for_display,
    diverging_rgb,
    diverging_rgba,
    encode_png,
    llr_limit,
)
from sbd_stream.sinks.viewer.store import Shown


@dataclass(frozen=True)
class ImageRequest:
    kind: str
    lo: float = 1.0
    hi: float = 99.5
    contrast: str = "specimen"
    region: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the frame's pixels
    side: int = 768
    overlay: bool = False  # LLR with alpha 0 where no column was painted


@dataclass(frozen=True)
class Mask:
    grid: np.ndarray  # True = specimen, one entry per block
    frac: tuple[float, float]  # one block's height and width as fractions of the frame


class Images:
    """Renders requests with small LRU caches (PNG per request, vacuum mask and LLR limit per frame)."""

    def __init__(self, max_side: int, pixel_of: Callable[[Shown], float | None]) -> None:
        self.max_side = max_side
        self.pixel_of = pixel_of
        self._lock = threading.Lock()
        self._png: collections.OrderedDict[tuple, tuple[bytes, dict[str, Any]]] = collections.OrderedDict()
        self._masks: collections.OrderedDict[tuple, Mask] = collections.OrderedDict()
        self._limits: collections.OrderedDict[tuple, float] = collections.OrderedDict()

    def _cached(self, cache: collections.OrderedDict, key: tuple, make: Callable[[], Any], keep: int) -> Any:
        with self._lock:
            if key in cache:
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > keep:
                cache.popitem(last=False)
        return value

    def mask(self, den: Shown) -> Mask:
        """Specimen / vacuum blocks of a denoised frame (~5 A blocks), once per frame."""

        def make() -> Mask:
            img = bin_to(den.data, self.max_side)
            f = max(1, -(-max(den.data.shape) // self.max_side))  # bin_to's factor
            px = self.pixel_of(den)
            block = round(VACUUM_BLOCK_A / (px * f)) if px else max(8, max(img.shape) // 40)
            block = max(4, block)
            grid = specimen_grid(img, block)
            h, w = den.data.shape
            return Mask(grid, (block * f / h, block * f / w))

        return self._cached(self._masks, (den.header.acq, den.header.seq), make, 8)

    def limit(self, llr: Shown, pct: float) -> float:
        key = (llr.header.acq, llr.header.seq, pct)
        return self._cached(self._limits, key, lambda: llr_limit(llr.data, pct, self.max_side), 16)

    def render(self, s: Shown, req: ImageRequest, den: Shown | None) -> tuple[bytes, dict[str, Any]]:
        """PNG and facts (region, bin, window or LLR limit); ``den``: the denoised frame for the mask."""
        side = max(16, min(int(req.side), self.max_side))
        key = (s.header.acq, s.header.seq, req, side, None if den is None else den.header.seq)
        return self._cached(self._png, key, lambda: self._render(s, req, den, side), 24)

    def _render(
        self, s: Shown, req: ImageRequest, den: Shown | None, side: int
    ) -> tuple[bytes, dict[str, Any]]:
        img, region, f = crop_for_display(s.data, req.region, side)
        info: dict[str, Any] = {"region": region, "bin": f}
        if req.kind == "llr":
            lim = self.limit(s, req.hi)
            info["llr_limit"] = lim
            rgb = diverging_rgba(img, lim) if req.overlay else diverging_rgb(img, 100.0, lim)
            return encode_png(rgb), info
        h, w = s.data.shape
        mask = None
        if req.contrast in ("specimen", "local") and den is not None:
            m = self.mask(den)
            x0, y0, x1, y1 = region
            mask = grid_to_region(m.grid, m.frac, (y0 / h, x0 / w, y1 / h, x1 / w), img.shape)
            info["specimen_fraction"] = round(float(mask.mean()), 3)
        lo, hi = window(img, req.lo, req.hi, mask if req.contrast != "frame" else None)
        info["window"] = (lo, hi)
        if req.contrast == "local":
            px = self.pixel_of(s)
            tile = round(LOCAL_TILE_A / (px * f)) if px else max(16, max(img.shape) // 6)
            lo_map, hi_map = local_windows(img, req.lo, req.hi, tile, (lo, hi), mask)
            return encode_png(to_gray8(img, lo_map, hi_map)), info
        return encode_png(to_gray8(img, lo, hi)), info
