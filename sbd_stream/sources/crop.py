"""Fit a simulated dataset's image to the detector's frame size, keeping its specimen in the frame.

A simulated image (``--source DATASET.h5``) is resampled to the detector's pixel and then cut to the
frame. It used to be cut from its top-left corner, and in the bundled ``samples/pt_ceo2_test.h5`` the
specimen (support and particle) lies in the bottom quarter: a 512^2 or 256^2 frame was pure vacuum, and
the demo's PSNR then scored a flat truth (68.5 dB at 512^2, 39.6 at 1024^2) that no atom entered. The
window is now centred on the specimen (as the held scene is centred in its frame), and
``specimen_fraction`` lets the emulator say so when a frame still holds (almost) none of it.
"""

from __future__ import annotations

import numpy as np

SPECIMEN_DEVIATION = 0.02
"""A pixel whose clean image differs from the vacuum level (1) by more than this holds specimen."""

MIN_SPECIMEN_FRACTION = 0.01
"""Below this fraction of specimen pixels the frame is called vacuum (the emulator warns)."""


def _start(size: int, frame: int, centre: float) -> int:
    """First index of a ``frame``-long window of a ``size``-long axis centred on ``centre``, inside it."""
    return int(min(max(round(centre - frame / 2), 0), size - frame))


def fit_to_frame(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or wrap-tile ``img`` to ``shape``: a crop is centred on the specimen's centroid (the weight
    of each pixel its clean image's distance from the vacuum level 1), or on the image's centre when it
    is all vacuum; an axis shorter than the frame is wrap-tiled from index 0 (the image whole, then
    its start again: the throughput pattern it always was)."""
    h, w = shape
    reps = (-(-h // img.shape[0]), -(-w // img.shape[1]))
    weight = np.abs(img.astype(np.float64) - 1.0)
    total = float(weight.sum())
    if total > 0:
        rows = float(weight.sum(axis=1) @ np.arange(img.shape[0])) / total
        cols = float(weight.sum(axis=0) @ np.arange(img.shape[1])) / total
    else:
        rows, cols = (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    r0 = _start(img.shape[0], h, rows + 0.5) if reps[0] == 1 else 0
    c0 = _start(img.shape[1], w, cols + 0.5) if reps[1] == 1 else 0
    if reps != (1, 1):
        img = np.tile(img, reps)
    return np.ascontiguousarray(img[r0 : r0 + h, c0 : c0 + w])


def specimen_fraction(images: list[np.ndarray]) -> float:
    """The fraction of pixels, over ``images`` (clean, vacuum = 1), that hold specimen."""
    if not images:
        return 0.0
    return float(np.mean([np.mean(np.abs(im - 1.0) > SPECIMEN_DEVIATION) for im in images]))
