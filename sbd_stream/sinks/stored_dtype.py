"""Denoised frames cast to an output's dtype (``record.denoised_dtype``, ``publish.dtype``) without
becoming inf.

float16 holds at most 65504. A denoised float32 pixel above that (a hot pixel, a bright spot summed
over a long exposure) became +inf in the file, with numpy's bare "overflow encountered in cast"
RuntimeWarning on stderr as the only trace (h5py's own conversion, used when the recorder has no
compressor pool, did the same without even that); the publisher sent the same +inf on the wire while
the recording held 65504 for that pixel. Both now apply one policy: such pixels are clipped to the
finite range (NaN stays NaN: it says something else), counted per output
(``sbd_recorded_clipped_pixels_total``, ``sbd_published_clipped_pixels_total``) and logged once per
output. For a normal frame the cost is a min and a max; the clip only runs on a frame that needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from sbd_stream.metrics import Metrics

__all__ = ["PUBLISHED", "RECORDED", "Output", "StoredDtype"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """Which output casts: its counter and what its one log line says about it and about the other."""

    counter: str  # the attribute of ``Metrics``
    metric: str  # its exported name, named in the log line
    where: str
    other: str  # the other output and its own setting: the two differ when their dtypes do


RECORDED = Output(
    "recorded_clipped_pixels",
    "sbd_recorded_clipped_pixels_total",
    'in the recording (record.denoised_dtype = "float32" keeps them',
    "the published frames follow publish.dtype: float32 unchanged, float16 clipped the same way",
)
PUBLISHED = Output(
    "published_clipped_pixels",
    "sbd_published_clipped_pixels_total",
    'in the published frames (publish.dtype = "float32" keeps them',
    "the recording follows record.denoised_dtype",
)


class StoredDtype:
    """Casts frames to ``dtype``, clipping floats beyond its finite range first (counted, logged once)."""

    def __init__(self, dtype: np.dtype | str, metrics: Metrics, output: Output = RECORDED) -> None:
        self.dtype = np.dtype(dtype)
        self.output = output
        self.counter: Counter = getattr(metrics, output.counter)
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
        self.counter.inc(n)
        if not self.warned:
            self.warned = True
            o = self.output
            log.warning(
                "frame %s of %s: %d denoised pixels beyond %s's range (+-%g) were clipped to it %s; %s). "
                "Counted in %s; logged once",
                seq, acq, n, self.dtype, limit, o.where, o.other, o.metric,
            )  # fmt: skip
        return np.clip(data, -limit, limit)
