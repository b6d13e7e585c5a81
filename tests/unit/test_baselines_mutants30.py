"""Baseline transforms and tuning pinned where the mutation round h30 found no failing test.

Rules quoted from ``training/evaluate/baselines.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.baselines import Baseline, anscombe, inverse_anscombe, raw, tune


def test_the_inverse_anscombe_maps_anything_below_zero_counts_image_to_zero() -> None:
    """'z = max(z, 2 sqrt(3/8))  # the image of zero counts': a denoised z below it (NLM and BM3D can
    undershoot) is zero counts; the closed form itself, unfloored, rises again there (1.17 at z = 0.5)."""
    floor = 2.0 * np.sqrt(3.0 / 8.0)
    assert inverse_anscombe(np.array([floor]))[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(inverse_anscombe(np.array([0.0 + 1e-3, 0.5, 1.0, floor])), 0.0, atol=1e-12)


def test_the_inverse_anscombe_is_the_exact_unbiased_inverse() -> None:
    """'the exact unbiased inverse (Makitalo & Foi 2011)': it maps E[anscombe(X)], X ~ Poisson(lam),
    back to lam ('accurate down to very low counts': within 0.4 % from 0.1 counts, 0.45 included)."""
    from scipy.stats import poisson

    k = np.arange(300)
    for lam in (0.1, 0.45, 1.0, 3.0, 10.0, 50.0):
        ez = float(np.sum(poisson.pmf(k, lam) * anscombe(k)))
        assert inverse_anscombe(np.array([ez]))[0] == pytest.approx(lam, rel=0.004), lam


def test_tune_keeps_the_first_grid_point_on_a_tie() -> None:
    """'Grid point with the best mean PSNR': points that score alike (here a parameter the method
    ignores) leave the first of the grid, so the choice follows the configured order."""
    clean = np.ones((8, 8)) + np.eye(8)
    counts = np.round(clean * 3.0)
    base = Baseline("ignores k", lambda c, d, k: raw(c, d), [{"k": 2}, {"k": 1}, {"k": 3}])
    best, scores = tune(base, [(clean, counts)], 3.0)
    assert len(set(scores.values())) == 1
    assert best == {"k": 2}


def test_low_pass_does_not_darken_the_frame_edges() -> None:
    """The Gaussian low-pass mirrors the frame at its edges (``mode="reflect"``): a flat frame stays flat
    to its corners (zero padding would charge the method for a dark border of ~sigma pixels)."""
    from training.evaluate.baselines import low_pass

    out = low_pass(np.full((16, 24), 2.0), 2.0, sigma=3.0)
    np.testing.assert_allclose(out, 1.0, rtol=1e-12)


def test_vst_nlm_returns_clean_units() -> None:
    """'Every method maps one frame of counts (H, W) at a known dose to an estimate of the clean image
    in clean units (vacuum = 1)': a flat frame of 50 counts at dose 50 comes back at ~1."""
    from training.evaluate.baselines import vst_nlm

    out = vst_nlm(np.full((24, 24), 50.0), 50.0, patch_distance=3)
    np.testing.assert_allclose(out, 1.0, rtol=0.01)


def test_tune_picks_the_best_point_when_every_psnr_is_negative() -> None:
    """'Grid point with the best mean PSNR': a grid whose every point scores below 0 dB (estimates 5-20x
    the clean range off) still picks its best, the least wrong, not its first."""
    clean = np.ones((8, 8)) + np.eye(8)
    counts = clean * 2.0
    base = Baseline("scaled", lambda c, d, k: raw(c, d) * k, [{"k": 10.0}, {"k": 5.0}, {"k": 20.0}])
    best, scores = tune(base, [(clean, counts)], 2.0)
    assert max(scores.values()) < 0
    assert best == {"k": 5.0}
