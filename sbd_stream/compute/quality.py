"""Image-quality numbers shared by tests, benchmarks and the demo: PSNR and seam visibility.

Seams are judged two ways, because neither alone is enough:

* ``seam_error``: RMS difference between a tiled result and whole-frame inference in 4-px bands around
  the tile hand-over lines, relative to the whole-frame image's standard deviation. Needs a reference;
  0 means the tiling is invisible by construction.
* ``seam_step_ratio``: mean absolute pixel-to-pixel step across the hand-over lines divided by the mean
  step everywhere else. Needs no reference; ~1 means no visible edge, a seam shows as > 1.
"""

from __future__ import annotations

import numpy as np


def psnr(estimate: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of ``estimate`` (first) against ``truth``, with the truth's range (max - min) unless given.

    The order matters (the range comes from ``truth``), and it is the reverse of
    ``training.evaluate.metrics.psnr(clean, estimate)``. Images of different shapes raise ``ValueError``:
    NumPy broadcast a (W,) row against an (H, W) frame into a plausible 16 dB.
    """
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(truth, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(
            f"psnr(estimate, truth): estimate {est.shape} and truth {ref.shape} differ; "
            "give two images of one shape, the estimate first"
        )
    rng = float(ref.max() - ref.min()) if data_range is None else data_range
    mse = float(np.mean((est - ref) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(rng**2 / mse)


PAPER_COUNTS_PER_PX = 0.45
"""Vacuum counts per detector pixel at which the paper's PSNR (counts clamped to [0, 1]) is defined."""


def paper_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """The paper code's PSNR (utils/metrics.py): counts clamped to [0, 1], a data range of 1 count.

    Its code multiplies counts by 255, clips to [0, 255] and calls skimage with data_range=255, which
    is the same number. Defined per detector pixel at ~0.45 counts, so it only compares with Table 5.1
    for frames at the detector's sampling and dose.
    """
    est = np.clip(np.asarray(estimate, dtype=np.float64), 0.0, 1.0)
    ref = np.clip(np.asarray(truth, dtype=np.float64), 0.0, 1.0)
    return psnr(est, ref, data_range=1.0)


def _band_mask(shape: tuple[int, int], rows: list[int], cols: list[int], half: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r in rows:
        mask[max(r - half, 0) : r + half, :] = True
    for c in cols:
        mask[:, max(c - half, 0) : c + half] = True
    return mask


def seam_error(
    tiled: np.ndarray, whole: np.ndarray, rows: list[int], cols: list[int], half: int = 2
) -> float:
    """RMS(tiled - whole) in bands around the seam lines, relative to std(whole)."""
    mask = _band_mask(tiled.shape[-2:], rows, cols, half)
    if not mask.any():
        return 0.0
    diff = (np.asarray(tiled, np.float64) - np.asarray(whole, np.float64))[..., mask]
    return float(np.sqrt(np.mean(diff**2)) / (np.std(whole) + 1e-12))


def seam_step_ratio(image: np.ndarray, rows: list[int], cols: list[int]) -> float:
    """Mean |step| across seam lines / mean |step| over all other lines (1 = invisible)."""
    img = np.asarray(image, np.float64)
    if img.ndim == 2:
        img = img[None]
    dy = np.abs(np.diff(img, axis=-2)).mean(axis=(0, -1))  # step between row i and i+1
    dx = np.abs(np.diff(img, axis=-1)).mean(axis=(0, -2))
    seam_r = [r - 1 for r in rows if 0 < r < img.shape[-2]]
    seam_c = [c - 1 for c in cols if 0 < c < img.shape[-1]]
    steps = [dy[seam_r], dx[seam_c]]
    seam = np.concatenate(steps)
    if seam.size == 0:
        return 1.0
    rest = np.concatenate([np.delete(dy, seam_r), np.delete(dx, seam_c)])
    return float(seam.mean() / (rest.mean() + 1e-12))
