"""Slow, explicit likelihood maps (numpy/scipy, one loop per column) to test ``likelihood`` against.

Written for reading, not speed: every step is spelled out the way Sec. 3.3 of the paper describes it,
with the full Poisson log pmf (including the log y! terms that cancel in the ratio) so the fast
closed form is checked rather than copied. It follows the same conventions as the fast path (scipy's
``mirror`` boundary = torch's ``reflect``; region pixels outside the frame are left out; nearest centre
wins when regions overlap, ties go to the lower LLR).

It lives beside the tests (imported as ``likelihood_reference``, like ``ci_require``) because only
they use it: the package ships the fast path alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import poisson

from sbd_stream.compute.likelihood import ColumnPolarity, LikelihoodConfig, VacuumMode, disk_offsets


@dataclass
class ReferenceColumns:
    positions: np.ndarray  # (K, 2) int [row, col]
    llr: np.ndarray  # (K,)
    region_mean: np.ndarray  # (K,)
    raw_sum: np.ndarray  # (K,)
    n_pixels: np.ndarray  # (K,)


def reference_vacuum(raw: np.ndarray, denoised: np.ndarray, cfg: LikelihoodConfig) -> float:
    """Mean raw count over the flattest ``vacuum_fraction`` of the frame's blocks (H, W)."""
    if cfg.vacuum_mode is VacuumMode.fixed:
        return float(cfg.vacuum_counts)
    return max(_flattest_means(raw, denoised, cfg)[0], cfg.min_rate)


def reference_calibration(raw: np.ndarray, denoised: np.ndarray, cfg: LikelihoodConfig) -> float:
    """The factor an estimated vacuum level puts on the denoised frame: the raw mean over the flattest
    blocks (floored at ``min_rate``) over the denoised mean over the same blocks, within 0.25-4; 1 fixed."""
    if cfg.vacuum_mode is VacuumMode.fixed:
        return 1.0
    raw_mean, den_mean = _flattest_means(raw, denoised, cfg)
    ratio = max(raw_mean, cfg.min_rate) / max(den_mean, cfg.min_rate)
    return min(max(ratio, 0.25), 4.0)


def _flattest_means(raw: np.ndarray, denoised: np.ndarray, cfg: LikelihoodConfig) -> tuple[float, float]:
    """(raw, denoised) means over the flattest ``vacuum_fraction`` of the blocks."""
    s = cfg.vacuum_block_px
    block_variance, block_raw_mean, block_den_mean = [], [], []
    m = int(2 / 3 * s)  # the denoised variance leaves out the frame's border (vacuum.BORDER_BLOCKS)
    inner = np.zeros(raw.shape, bool)
    inner[m : raw.shape[0] - m, m : raw.shape[1] - m] = True
    for top in range(0, raw.shape[0] - s + 1, s):  # whole blocks only, remainder strips ignored
        for left in range(0, raw.shape[1] - s + 1, s):
            keep = inner[top : top + s, left : left + s]
            keep = keep if keep.any() else np.ones_like(keep)
            block_variance.append(denoised[top : top + s, left : left + s].astype(np.float64)[keep].var())
            block_raw_mean.append(raw[top : top + s, left : left + s].astype(np.float64).mean())
            block_den_mean.append(denoised[top : top + s, left : left + s].astype(np.float64).mean())
    variance, raw_mean = np.array(block_variance), np.array(block_raw_mean)
    k = max(1, int(cfg.vacuum_fraction * variance.size))
    threshold = np.sort(variance)[k - 1]
    vacuum_blocks = variance <= threshold
    return float(raw_mean[vacuum_blocks].mean()), float(np.array(block_den_mean)[vacuum_blocks].mean())


def reference_detect(denoised: np.ndarray, vacuum: float, cfg: LikelihoodConfig) -> np.ndarray:
    """(K, 2) int [row, col]: maxima of the sign-flipped, scale-normalised LoG above the threshold."""
    log = ndimage.gaussian_laplace(
        denoised.astype(np.float64), sigma=cfg.sigma_px, mode="mirror", truncate=cfg.truncate
    )
    sign = -1.0 if cfg.polarity is ColumnPolarity.bright else 1.0
    response = sign * cfg.sigma_px**2 * log / vacuum
    size = 2 * cfg.min_distance_px + 1
    neighbourhood_max = ndimage.maximum_filter(response, size=size, mode="constant", cval=-np.inf)
    peaks = (response == neighbourhood_max) & (response > cfg.threshold)
    return np.argwhere(peaks)


def reference_region(centre: np.ndarray, shape: tuple[int, int], cfg: LikelihoodConfig) -> np.ndarray:
    """(n, 2) pixel coordinates of the disk region R around ``centre`` that fall inside the frame."""
    pixels = []
    for dy, dx in disk_offsets(cfg.radius_px):
        y, x = int(centre[0]) + int(dy), int(centre[1]) + int(dx)
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            pixels.append((y, x))
    return np.asarray(pixels, dtype=np.int64).reshape(-1, 2)


def reference_llr(
    raw: np.ndarray, denoised: np.ndarray, centre: np.ndarray, vacuum: float, cfg: LikelihoodConfig
) -> tuple[float, float, float, int]:
    """(llr, lam1, k, n) of one region, from the Poisson log pmf summed over its pixels."""
    region = reference_region(centre, raw.shape, cfg)
    y = raw[region[:, 0], region[:, 1]].astype(np.float64)
    x = denoised[region[:, 0], region[:, 1]].astype(np.float64)
    lam1 = max(float(x.mean()), cfg.min_rate)
    # hypothesis (1): the column is there, with the denoised mean (constant) or pixels (pattern)
    rates = np.maximum(x, cfg.min_rate) if cfg.column_model == "pattern" else lam1
    log_l_column = poisson.logpmf(y, rates).sum()
    log_l_vacuum = poisson.logpmf(y, vacuum).sum()  # hypothesis (2): artefact, the region is vacuum
    return float(log_l_column - log_l_vacuum), lam1, float(y.sum()), len(region)


def reference_frame(
    raw: np.ndarray, denoised: np.ndarray, cfg: LikelihoodConfig, vacuum: float | None = None
) -> tuple[np.ndarray, ReferenceColumns, float]:
    """Map (H, W), columns and vacuum level of one frame (``vacuum`` given: used instead of estimated)."""
    if vacuum is None:
        vacuum = reference_vacuum(raw, denoised, cfg)
    centres = reference_detect(denoised, vacuum, cfg)
    rows = [reference_llr(raw, denoised, c, vacuum, cfg) for c in centres]
    llr = np.array([r[0] for r in rows], dtype=np.float64)

    llr_map = np.zeros(raw.shape, dtype=np.float64)
    nearest = np.full(raw.shape, np.inf)
    for c, value in zip(centres, llr, strict=True):
        for y, x in reference_region(c, raw.shape, cfg):
            d2 = (y - c[0]) ** 2 + (x - c[1]) ** 2
            if d2 < nearest[y, x] or (d2 == nearest[y, x] and value < llr_map[y, x]):
                nearest[y, x] = d2
                llr_map[y, x] = value
    cols = ReferenceColumns(
        positions=centres,
        llr=llr,
        region_mean=np.array([r[1] for r in rows]),
        raw_sum=np.array([r[2] for r in rows]),
        n_pixels=np.array([r[3] for r in rows]),
    )
    return llr_map, cols, vacuum
