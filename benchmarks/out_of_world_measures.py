"""The measures of ``bench_out_of_world``: pure functions of arrays, in vacuum units and Angstroms.

Kept apart from the scenes and the product paths so that each is checked on synthetic arrays whose
answer is known (tests/unit/test_bench_out_of_world.py) and the benchmark stays readable.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

SIGMAS_A = (0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.5, 2.5, 4.0, 7.0)  # the oracle low-pass's choices
BAND = (0.3, 0.8)  # 1/A: the lattice band (d = 1.25-3.3 A)


def rmse(est: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((est[mask] - clean[mask]) ** 2)))


def oracle_low_pass(
    raws: np.ndarray, clean: np.ndarray, mask: np.ndarray, px: float, sigmas_A: tuple[float, ...] = SIGMAS_A
) -> tuple[float, float]:
    """(sigma in A, mean RMSE over frames) of the Gaussian low-pass with the least RMSE in ``mask``:
    the best a blur can do there, known only with the clean image in hand."""
    scores = [
        (float(np.mean([rmse(gaussian_filter(r, s / px, mode="wrap"), clean, mask) for r in raws])), s)
        for s in sigmas_A
    ]
    best, sigma = min(scores)
    return sigma, best


def power_spectrum(img: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed |FFT|^2 of a square crop (zero frequency at the centre) and |k| in 1/A per bin."""
    n = img.shape[0]
    w = np.hanning(n)
    p = np.fft.fftshift(np.abs(np.fft.fft2((img - img.mean()) * np.outer(w, w))) ** 2)
    k1 = np.fft.fftshift(np.fft.fftfreq(n, px))
    return p, np.hypot(*np.meshgrid(k1, k1, indexing="ij"))


def reflections(
    p_clean: np.ndarray, k: np.ndarray, band: tuple[float, float] = BAND, rel: float = 0.01, near: int = 5
) -> np.ndarray:
    """Bins within ``near // 2`` of a reflection of the clean image: a local maximum of its spectrum in
    the band, above ``rel`` of the band's strongest."""
    b = (k >= band[0]) & (k <= band[1])
    peaks = (p_clean == maximum_filter(p_clean, 5)) & b & (p_clean > rel * p_clean[b].max())
    return maximum_filter(peaks, near)


def on_reflection_fraction(
    p: np.ndarray, k: np.ndarray, near: np.ndarray, band: tuple[float, float] = BAND
) -> float:
    """Share of the band's power on the clean image's reflections: ~1 for the right lattice, the
    reflections' share of the band's area for white noise, low for a lattice the specimen lacks."""
    b = (k >= band[0]) & (k <= band[1])
    return float(p[b & near].sum() / p[b].sum())


def off_reflection_ring(
    p: np.ndarray, k: np.ndarray, near: np.ndarray, band: tuple[float, float] = BAND
) -> tuple[float, float, float]:
    """A ring of lattice power the specimen does not have: over one-bin annuli of the bins away from (2
    bins beyond) every clean reflection, the |k| (1/A) of the highest mean power and the range of k
    around it where the mean stays above half of that."""
    off = (k >= band[0]) & (k <= band[1]) & ~maximum_filter(near, 5)
    dk = float(k[k > 0].min())  # one bin, 1 / (n px)
    ring = np.rint(k[off] / dk).astype(int)
    mean = np.bincount(ring, p[off]) / np.maximum(np.bincount(ring), 1)
    top = lo = hi = int(np.argmax(mean))
    while lo > 0 and mean[lo - 1] >= mean[top] / 2:
        lo -= 1
    while hi + 1 < len(mean) and mean[hi + 1] >= mean[top] / 2:
        hi += 1
    return top * dk, lo * dk, hi * dk


def disk_contrast(
    img: np.ndarray, yx_px: tuple[float, float], r_px: float, ring_px: tuple[float, float]
) -> float:
    """Mean over a disk at the column minus the median over a ring around it (the local vacuum), in the
    image's units: a column's peak contrast, blind to a level error of the whole frame."""
    yy, xx = np.indices(img.shape)
    d = np.hypot(yy - yx_px[0], xx - yx_px[1])
    return float(img[d <= r_px].mean() - np.median(img[(d >= ring_px[0]) & (d <= ring_px[1])]))


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each point of ``a`` ([row, col, ...]), the distance to the nearest point of ``b`` (inf: none)."""
    if len(b) == 0 or len(a) == 0:
        return np.full(len(a), np.inf)
    return np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]).min(1)


def match(found: np.ndarray, truth: np.ndarray, tol: float) -> tuple[int, int]:
    """(truth points with a detection within ``tol``, detections farther than ``tol`` from all)."""
    return int((nearest(truth, found) < tol).sum()), int((nearest(found, truth) >= tol).sum())
