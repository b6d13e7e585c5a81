"""The oracle low-pass of ``training/evaluate/images.py`` pinned on tiny frames (mutation round h30).

'The grid ``sigmas_px`` grows (x ``WIDER``) while any score's best width is the widest tried, until that
width reaches the frame's larger side, and shrinks (/ ``WIDER``) while one is the narrowest, down to
``NARROWEST_PX``'; ``_wide_blur`` is 'gaussian_filter(counts, sigma_px, mode="reflect")' by FFT.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from training.evaluate.images import NARROWEST_PX, _wide_blur, oracle_low_pass
from training.evaluate.regions import PARTICLE, VACUUM


def test_the_wide_blur_is_the_reflecting_gaussian_filter() -> None:
    """Up to gaussian_filter's kernel truncation at 4 sigma (< 1e-5 here)."""
    x = np.random.default_rng(0).random((16, 24))
    for sigma in (1.5, 4.0):
        np.testing.assert_allclose(_wide_blur(x, sigma), gaussian_filter(x, sigma, mode="reflect"), atol=1e-4)


def test_an_all_vacuum_frame_widens_the_grid_up_to_the_frames_size() -> None:
    """Poisson counts of a flat 0.45 vacuum: the best blur is the widest; the grid grows past the
    configured 1-2 px until it reaches the frame's larger side (32 px) and says so."""
    clean = np.full((24, 32), 0.45)
    counts = np.random.default_rng(0).poisson(clean).astype(np.float64)
    regions = np.full(clean.shape, VACUUM, np.uint8)
    best = oracle_low_pass(clean, counts, regions, [1.0, 2.0])
    assert best["vacuum"]["sigma_px"] == 32.0
    assert best["vacuum"]["sigma_at_edge"] == "widest"


def test_noise_free_detail_narrows_the_grid_down_to_the_narrowest() -> None:
    """Counts equal to a checkerboard clean image: the best blur is none; the grid shrinks from 2-3 px
    to NARROWEST_PX and says the best width is at that end."""
    clean = 0.2 + 0.6 * (np.indices((16, 16)).sum(0) % 2)
    regions = np.full(clean.shape, PARTICLE, np.uint8)
    best = oracle_low_pass(clean, clean.copy(), regions, [2.0, 3.0])
    assert best["particle"]["sigma_px"] == NARROWEST_PX
    assert best["particle"]["sigma_at_edge"] == "narrowest"


def test_an_exact_estimate_scores_infinite_psnr_not_no_score() -> None:
    """A flat frame is reproduced exactly by every blur: its best score is +inf dB, not left out."""
    clean = np.full((8, 12), 0.45)
    regions = np.full(clean.shape, VACUUM, np.uint8)
    best = oracle_low_pass(clean, clean.copy(), regions, [1.0])
    assert best["vacuum"]["paper_psnr"] == float("inf") and best["whole"]["paper_psnr"] == float("inf")
    assert best["vacuum"]["sigma_px"] == pytest.approx(12.0)
