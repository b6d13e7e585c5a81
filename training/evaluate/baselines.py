"""Classical baselines of Table 5.1 and their hyperparameter grids.

Every method maps one frame of counts (H, W) at a known dose to an estimate of the clean image in clean
units (vacuum = 1), so all of them go through the same metrics as SBD. Hyperparameters are picked on
the validation split (``tune``), as in the paper; the grids are small because this runs on 2 CPU cores.

The VST methods use the Anscombe transform, for which Poisson noise becomes approximately unit-variance
Gaussian, and the closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011). At
~0.45 counts per pixel the Anscombe approximation is poor; that is part of why these baselines fail on
low-dose TEM, and the paper used the same transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from training.evaluate.progress import tracked

Method = Callable[[np.ndarray, float], np.ndarray]


def anscombe(counts: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.asarray(counts, np.float64) + 3.0 / 8.0)


def inverse_anscombe(z: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse; accurate down to very low counts."""
    z = np.maximum(np.asarray(z, np.float64), 2.0 * np.sqrt(3.0 / 8.0))  # the image of zero counts
    s = np.sqrt(1.5)
    return np.maximum(0.25 * z**2 + 0.25 * s / z - 11.0 / 8.0 / z**2 + 0.625 * s / z**3 - 0.125, 0.0)


def raw(counts: np.ndarray, dose: float) -> np.ndarray:
    return np.asarray(counts, np.float64) / dose


def low_pass(counts: np.ndarray, dose: float, sigma: float = 2.0) -> np.ndarray:
    """Gaussian low-pass filter (cut-off ~ 1 / (2 pi sigma) cycles per pixel)."""
    return ndimage.gaussian_filter(raw(counts, dose), sigma, mode="reflect")


def adaptive_wiener(counts: np.ndarray, dose: float, size: int = 27, noise_scale: float = 1.0) -> np.ndarray:
    """Local adaptive Wiener filter (Lim 1990; the algorithm of ``scipy.signal.wiener`` / ``wiener2``).

    Local means and variances use mirrored borders: scipy's version zero-pads, which darkens a band of
    ``size / 2`` pixels along every edge and would charge the method for an artefact of padding. The
    noise power is known from the dose (Var(counts / dose) = clean / dose); ``noise_scale`` > 1 overstates
    it so windows whose variance only fluctuates above the noise are smoothed too (tuned on validation).
    """
    x = raw(counts, dose)
    noise = noise_scale * float(np.mean(x)) / dose
    mean = ndimage.uniform_filter(x, size, mode="reflect")
    var = np.maximum(ndimage.uniform_filter(x * x, size, mode="reflect") - mean**2, 1e-12)
    return mean + np.maximum(var - noise, 0.0) / var * (x - mean)


def vst_nlm(
    counts: np.ndarray, dose: float, h: float = 0.8, patch_size: int = 7, patch_distance: int = 11
) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    z = anscombe(counts)
    d = denoise_nl_means(
        z, h=h, sigma=1.0, patch_size=patch_size, patch_distance=patch_distance, fast_mode=True
    )
    return inverse_anscombe(d) / dose


def vst_bm3d(counts: np.ndarray, dose: float, sigma: float = 1.0) -> np.ndarray:
    import bm3d

    z = anscombe(counts)
    return inverse_anscombe(np.asarray(bm3d.bm3d(z, sigma_psd=sigma), np.float64)) / dose


@dataclass
class Baseline:
    """A method, the grid its hyperparameters are tuned over, and a cap on images (for slow ones)."""

    label: str
    fn: Callable[..., np.ndarray]
    grid: Sequence[dict[str, Any]] = field(default_factory=lambda: [{}])
    tune_images: int = 12
    max_test_images: int | None = None

    def bind(self, params: dict[str, Any]) -> Method:
        return lambda counts, dose: self.fn(counts, dose, **params)


def classical_baselines(bm3d_test_images: int | None = 40) -> list[Baseline]:
    return [
        Baseline("Raw", raw),
        Baseline(
            "Low-pass filter",
            low_pass,
            [{"sigma": s} for s in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)],
        ),
        Baseline(
            "Adaptive Wiener filter",
            adaptive_wiener,
            [{"size": s, "noise_scale": k} for s in (9, 19, 27, 39, 55, 79) for k in (1.0, 1.5, 2.5)],
        ),
        Baseline(
            "VST + NLM",
            vst_nlm,
            [
                {"h": h, "patch_size": 7, "patch_distance": d}
                for h in (0.6, 0.8, 1.0, 1.3, 1.7, 2.2)
                for d in (6, 11)
            ],
        ),
        Baseline(
            "VST + BM3D",
            vst_bm3d,
            [{"sigma": s} for s in (0.8, 1.0, 1.3, 1.7, 2.2)],
            tune_images=4,
            max_test_images=bm3d_test_images,
        ),
    ]


def tune(
    baseline: Baseline, items: Sequence[tuple[np.ndarray, np.ndarray]], dose: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """Grid point with the best mean PSNR on (clean, counts) validation pairs; also every point's score."""
    from training.evaluate.metrics import psnr

    use = items[: baseline.tune_images]
    scores: dict[str, float] = {}
    best, best_score = dict(baseline.grid[0]), -np.inf
    what = f"grid settings (each on {len(use)} validation images)"
    for params in tracked(baseline.grid, f"{baseline.label} (tuning)", what):
        f = baseline.bind(params)
        s = float(np.mean([psnr(clean, f(counts, dose)) for clean, counts in use]))
        scores[repr(params)] = s
        if s > best_score:
            best, best_score = dict(params), s
    return best, scores
