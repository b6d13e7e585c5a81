"""The rule for non-finite pixels, applied where a frame enters the pipeline (never in the batch stage).

Why: a float frame with a few NaN / Inf pixels (a dead or saturated pixel flagged by a bridge, a
division by a zero flat-field) came out of the denoiser 62-100 % NaN -- every convolution spreads
them over the network's field of view -- with no flag and no metric. The raw frame is still recorded
exactly as received (pixels are data, and the recording must show what the detector sent); the copy
handed to the denoiser has each NaN / +-Inf pixel replaced by the mean of the frame's finite pixels
(0 when none is finite), is counted in ``sbd_frames_nonfinite_total`` / ``sbd_pixels_nonfinite_total``,
and its outputs carry ``meta.nonfinite_pixels = N`` so a subscriber knows those pixels were invented.
Integer frames cannot hold such values and pass untouched at no cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics

__all__ = ["NONFINITE_KEY", "replace_nonfinite"]

NONFINITE_KEY = "nonfinite_pixels"
"""The ``meta`` key of outputs whose raw frame had non-finite pixels (their count)."""


def replace_nonfinite(frame: Frame, metrics: Metrics | None = None) -> Frame:
    """``frame`` itself when all its pixels are finite; else a flagged copy with them replaced."""
    data = frame.data
    if data.dtype.kind != "f":
        return frame
    with np.errstate(invalid="ignore"):  # inf + -inf is nan: that is what is being looked for
        total = np.add.reduce(data, axis=None, dtype=np.float64)
    if np.isfinite(total):  # a float64 sum of float16/32 pixels cannot overflow: all pixels finite
        return frame
    bad = ~np.isfinite(data)
    n = int(np.count_nonzero(bad))
    if n == 0:
        return frame
    good = data[~bad]
    fill = float(good.mean(dtype=np.float64)) if good.size else 0.0
    clean = np.where(bad, np.asarray(fill, dtype=data.dtype), data)
    clean.flags.writeable = False
    if metrics is not None:
        metrics.frames_nonfinite.inc()
        metrics.pixels_nonfinite.inc(n)
    header = dataclasses.replace(frame.header, meta={**frame.header.meta, NONFINITE_KEY: n})
    return dataclasses.replace(frame, header=header, data=clean, chunk=None)
