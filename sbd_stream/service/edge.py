"""The rule for invalid pixels, applied where a frame enters the pipeline (never in the batch stage).

Why: a float frame with a few NaN / Inf pixels (a dead or saturated pixel flagged by a bridge, a
division by a zero flat-field) came out of the denoiser 62-100 % NaN -- every convolution spreads
them over the network's field of view -- with no flag and no metric. Integer frames have their own
flag: a pixel at the dtype's largest value (2^bits - 1), which DECTRIS detectors write for defective
and module-gap pixels and any counter writes when it saturates. One such uint16 pixel (65535 counts in
a 0.45 counts/px frame) lifted the denoised mean of a 256^2 frame from 0.45 to 1.7, over a ~60 px
radius; a uint32 one to 1e5. Neither is a count the engine can use.

The raw frame is still recorded exactly as received (pixels are data, and the recording must show
what the detector sent); the copy handed to the denoiser has each such pixel replaced by the mean of
the frame's other pixels (0 when there are none), is counted (``sbd_frames_nonfinite_total`` /
``sbd_pixels_nonfinite_total``; ``sbd_frames_saturated_total`` / ``sbd_pixels_saturated_total``), and
its outputs carry ``meta.nonfinite_pixels = N`` or ``meta.saturated_pixels = N`` so a subscriber knows
those pixels were invented. A frame without them passes untouched at the cost of one reduction.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics

__all__ = [
    "NONFINITE_KEY", "SATURATED_KEY", "clean_pixels", "invalid_pixels", "negative_pixels", "replace_invalid",
    "replaced", "report_values",
]  # fmt: skip

NONFINITE_KEY = "nonfinite_pixels"
"""The ``meta`` key of outputs whose raw frame had non-finite pixels (their count)."""
SATURATED_KEY = "saturated_pixels"
"""The ``meta`` key of outputs whose raw (unsigned integer) frame had pixels at the dtype's maximum."""


def invalid_pixels(data: np.ndarray) -> tuple[str, np.ndarray] | None:
    """(meta key, mask) of the pixels the denoiser must not see, or None when there are none."""
    kind = data.dtype.kind
    if kind == "f":
        with np.errstate(invalid="ignore"):  # inf + -inf is nan: that is what is being looked for
            total = np.add.reduce(data, axis=None, dtype=np.float64)
        if np.isfinite(total):  # a float64 sum of float16/32 pixels cannot overflow: all pixels finite
            return None
        return NONFINITE_KEY, ~np.isfinite(data)
    if kind == "u" and data.size:
        top = np.iinfo(data.dtype).max
        if data.max() < top:
            return None
        return SATURATED_KEY, data == top
    return None


def clean_pixels(data: np.ndarray) -> tuple[np.ndarray, str | None, int]:
    """(``data`` or a read-only copy with its unusable pixels replaced, meta key or None, how many).

    The array-level rule behind ``replace_invalid``: Python callers without a ``Frame``
    (``service/frames.py``) get exactly what the service edge and ``sbd-stream denoise`` do.
    """
    found = invalid_pixels(data)
    if found is None:
        return data, None, 0
    key, bad = found
    n = int(np.count_nonzero(bad))
    if n == 0:
        return data, None, 0
    good = data[~bad]
    fill = float(good.mean(dtype=np.float64)) if good.size else 0.0
    # an integer frame keeps its dtype (the queue, the header and the batch stage expect it): its fill
    # is the mean rounded, at 0.45 counts/px the most common count, 0
    fill_value = np.asarray(fill if data.dtype.kind == "f" else round(fill), dtype=data.dtype)
    clean = np.where(bad, fill_value, data)
    clean.flags.writeable = False
    return clean, key, n


def replace_invalid(frame: Frame, metrics: Metrics | None = None) -> Frame:
    """``frame`` itself when all its pixels are usable; else a flagged copy with them replaced."""
    clean, key, n = clean_pixels(frame.data)
    if key is None:
        return frame
    if metrics is not None:
        if key == NONFINITE_KEY:
            metrics.frames_nonfinite.inc()
            metrics.pixels_nonfinite.inc(n)
        else:
            metrics.frames_saturated.inc()
            metrics.pixels_saturated.inc(n)
    header = dataclasses.replace(frame.header, meta={**frame.header.meta, key: n})
    return dataclasses.replace(frame, header=header, data=clean, chunk=None)


replace_nonfinite = replace_invalid  # the earlier name (non-finite pixels were the first rule)


def replaced(frame: Frame) -> int:
    """How many of ``frame``'s pixels ``replace_invalid`` replaced (0 for an untouched frame)."""
    meta = frame.header.meta
    return int(meta.get(NONFINITE_KEY, 0)) + int(meta.get(SATURATED_KEY, 0))


def negative_pixels(frames: np.ndarray) -> int:
    """Pixels below zero: not counts (a dark-subtracted or gain-corrected frame), passed on as they are.

    The engines were trained on Poisson counts; offline ``denoise`` reports how many such pixels it
    saw so a user knows the input was not what the engine expects. Unsigned frames cost nothing.
    """
    if frames.dtype.kind == "u":
        return 0
    with np.errstate(invalid="ignore"):
        return int(np.count_nonzero(frames < 0))


def report_values(per_frame: np.ndarray, negative: int, output: Path | str) -> None:
    """One warning each for replaced and negative input pixels: what was done and where to look
    (``output``: a file, whose ``/replaced_pixels`` has the counts, or a text naming where they are)."""
    log = logging.getLogger(__name__)
    if per_frame.any():
        first = np.flatnonzero(per_frame)[:5].tolist()
        log.warning(
            "%d NaN / Inf (float) or dtype-maximum (unsigned: defective, gap, saturated) pixels in %d "
            "frames (first: %s) were replaced by their frame's mean before denoising; per frame in %s",
            int(per_frame.sum()), int(np.count_nonzero(per_frame)), first,
            f"{output}:/replaced_pixels" if isinstance(output, Path) else output,
        )  # fmt: skip
    if negative:
        log.warning(
            "%d input pixels are negative: not detector counts (dark-subtracted or gain-corrected?); "
            "the engine was trained on Poisson counts and passes them through",
            negative,
        )
