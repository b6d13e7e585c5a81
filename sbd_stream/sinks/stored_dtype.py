"""Denoised frames cast to the recording's dtype (``record.denoised_dtype``) without becoming inf.

float16, the default, holds at most 65504. A denoised float32 pixel above that (a hot pixel, a bright
spot summed over a long exposure) became +inf in the file, with numpy's bare "overflow encountered in
cast" RuntimeWarning on stderr as the only trace (h5py's own conversion, used when the recorder has no
compressor pool, did the same without even that). Such pixels are clipped to the finite range
(NaN stays NaN: it says something else), counted in ``sbd_recorded_clipped_pixels_total`` and logged
once. The published frames are float32 and are not touched. For a normal frame the cost is a min and
a max; the clip only runs on a frame that needs it.
"""

from __future__ import annotations

import logging

import numpy as np

from sbd_stream.metrics import Metrics

__all__ = ["StoredDtype"]

log = logging.getLogger(__name__)


class StoredDtype:
    """Casts frames to ``dtype``, clipping floats beyond its finite range first (counted, logged once)."""

    def __init__(self, dtype: np.dtype | str, metrics: Metrics) -> None:
        self.dtype = np.dtype(dtype)
        self.metrics = metrics
        self.warned = False

    def __call__(self, data: np.ndarray, acq: str = "", seq: int = 0) -> np.ndarray:
        if data.dtype == self.dtype:
            return data
        if self.dtype.kind == "f" and data.dtype.kind == "f" and data.size:
            limit = float(np.finfo(self.dtype).max)
            if limit < float(np.finfo(data.dtype).max):
                lo, hi = data.min(), data.max()
                if not (lo >= -limit and hi <= limit):  # beyond the range, or NaN (which fails both)
                    data = self._clip(data, limit, acq, seq)
        return data.astype(self.dtype)

    def _clip(self, data: np.ndarray, limit: float, acq: str, seq: int) -> np.ndarray:
        n = int(np.count_nonzero(np.abs(data) > limit))  # NaN compares False: not counted, kept
        if not n:
            return data
        self.metrics.recorded_clipped_pixels.inc(n)
        if not self.warned:
            self.warned = True
            log.warning(
                "frame %s of %s: %d denoised pixels beyond %s's range (+-%g) were clipped to it in the "
                "recording (published frames are float32 and unchanged; record.denoised_dtype = "
                '"float32" keeps them). Counted in sbd_recorded_clipped_pixels_total; logged once',
                seq, acq, n, self.dtype, limit,
            )  # fmt: skip
        return np.clip(data, -limit, limit)
