"""PSNR and SSIM as users report them, pinned by hand on estimates that overshoot or leave [0, 1].

Why: the mutation audit (audit26, defect 9: Q1, Q2, M5, M10, Q4) found that ``paper_psnr`` could stop
clipping the estimate, and that the PSNR / SSIM range could come from the estimate instead of the clean
image, without a failing test: the old references clipped before calling, or used an estimate with the
clean image's range. The definitions: ../shared/notes/physics-and-paper-code.md "The paper's code"
("counts clamped to [0, 1] and a data range of 1 count"), the ``paper_psnr`` docstring and docs/training.md
"Metrics" ("in clean units with the data range of the clean image (max - min)").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sbd_stream.compute import quality
from training.evaluate import metrics


def _counts_pair() -> tuple[np.ndarray, np.ndarray]:
    """(truth, estimate) in counts on a 4 x 6 frame, truth 0.5 except one pixel at 1.2 counts.

    After clamping to [0, 1]: the estimate's 1.5 and -0.5 each miss by 0.5, the truth's 1.2 is met by 1.0
    exactly; MSE = 2 x 0.25 / 24 = 1/48, PSNR = 10 log10(48) = 16.81 dB. Unclamped the MSE would be
    (1 + 1 + 0.04) / 24 and the PSNR 10.71 dB.
    """
    truth = np.full((4, 6), 0.5)
    truth[2, 2] = 1.2
    est = truth.copy()
    est[0, 0] = 1.5
    est[1, 4] = -0.5
    est[2, 2] = 1.0
    return truth, est


def test_paper_psnr_clamps_both_images_to_one_count_with_data_range_one() -> None:
    truth, est = _counts_pair()
    assert quality.paper_psnr(est, truth) == pytest.approx(10 * math.log10(48))
    # the range is 1 count, not the (clamped) truth's 0.5: that would give 10 log10(0.25 * 48)
    assert quality.paper_psnr(est, truth) != pytest.approx(10 * math.log10(0.25 * 48))


def test_paper_psnr_scores_an_overshoot_as_its_clamped_error() -> None:
    """An estimate of 1.8 counts over a truth of 0.9 scores like one of 1.0 (the paper's x 255, clip)."""
    truth = np.full((8, 8), 0.45)
    truth[2:6, 2:6] = 0.9
    est = truth.copy()
    est[3, 3] = 1.8
    clamped = truth.copy()
    clamped[3, 3] = 1.0
    expected = 10 * math.log10(64 / 0.1**2)  # one pixel off by 0.1 of 64
    assert quality.paper_psnr(est, truth) == pytest.approx(expected)
    assert quality.paper_psnr(clamped, truth) == pytest.approx(expected)


def _overshoot_pair() -> tuple[np.ndarray, np.ndarray]:
    """(clean, estimate) in clean units: clean range 0.5 (vacuum 1, a block at 1.5); the estimate is exact
    but for one pixel at 3.0 where the clean is 1.0 (range 2.0). MSE = 2^2 / 64 = 1/16."""
    clean = np.ones((8, 8))
    clean[2:4, 2:6] = 1.5
    est = clean.copy()
    est[7, 7] = 3.0
    return clean, est


def test_psnr_takes_the_range_from_the_clean_image_in_both_apis() -> None:
    """10 log10(0.5^2 / (1/16)) = 10 log10(4) = 6.02 dB; the estimate's range would give 18.06 dB."""
    clean, est = _overshoot_pair()
    expected = 10 * math.log10(0.5**2 * 16)
    assert metrics.psnr(clean, est) == pytest.approx(expected)  # clean first
    assert quality.psnr(est, clean) == pytest.approx(expected)  # estimate first
    assert quality.psnr(est, clean, data_range=2.0) == pytest.approx(10 * math.log10(4 * 16))


def test_ssim_takes_the_range_from_the_clean_image() -> None:
    """SSIM itself is skimage's; what ``ssim`` decides is the range, and it must be the clean image's
    (max - min = 0.5), not the overshooting estimate's (~2.6), which raises this score from 0.39 to 0.81."""
    rng = np.random.default_rng(1)
    clean = np.ones((32, 48))
    clean[8:20, 10:30] = 1.5
    est = clean + rng.normal(0, 0.05, clean.shape)
    est[0, 0] = 3.5
    expected = structural_similarity(clean, est, data_range=0.5)
    from_estimate = structural_similarity(clean, est, data_range=float(est.max() - est.min()))
    assert abs(expected - from_estimate) > 0.1  # the case tells the two ranges apart
    assert metrics.ssim(clean, est) == pytest.approx(expected, abs=1e-12)


def test_seam_error_band_reaches_half_pixels_on_both_sides_of_the_line() -> None:
    """'RMS difference ... in 4-px bands around the tile hand-over lines': with half = 2 the band of seam
    row 4 is rows 2-5, so a difference of 1 on row 5 counts (RMS over 32 px = 0.5) and one on row 6 does not.
    Relative to std(whole) = std(0..7) = sqrt(5.25)."""
    whole = np.repeat(np.arange(8.0)[:, None], 8, axis=1)
    below = whole.copy()
    below[5] += 1
    assert quality.seam_error(below, whole, rows=[4], cols=[]) == pytest.approx(0.5 / math.sqrt(5.25))
    above = whole.copy()
    above[2] += 1
    assert quality.seam_error(above, whole, rows=[4], cols=[]) == pytest.approx(0.5 / math.sqrt(5.25))
    outside = whole.copy()
    outside[6] += 1
    outside[1] += 1
    assert quality.seam_error(outside, whole, rows=[4], cols=[]) == 0.0
    # columns: the same band, turned
    assert quality.seam_error(below.T, whole.T, rows=[], cols=[4]) == pytest.approx(0.5 / math.sqrt(5.25))
