"""Detection and image-metric rules pinned where the mutation round h30 found no failing test.

Rules quoted from ``training/evaluate/metrics.py``; images are small and built by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.metrics import WHITE, DetectionSpec, detect_atoms, ssim

SPEC = DetectionSpec(pixel_size_A=0.155, border_px=6, threshold=0.01)


def _near(dets: np.ndarray, r: float, c: float, tol: float = 2.0) -> bool:
    return bool(len(dets)) and bool((np.hypot(dets[:, 0] - r, dets[:, 1] - c) < tol).any())


def test_the_image_level_is_its_median_not_its_mean() -> None:
    """Blobs are found on the image less its median (the vacuum where it covers most of the frame): a
    bright plateau over 37 % of the frame raises the mean above a 0.3 column's peak, which the mean
    would then clip away."""
    h, w = 64, 96
    yy, xx = np.mgrid[:h, :w]
    img = np.ones((h, w))
    img[:, 60:] = 2.0  # mean 1.375, median 1.0
    img += 0.3 * np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / (2 * 2.5**2))
    assert _near(detect_atoms(img, WHITE, SPEC), 30, 20)


def test_a_dark_ring_is_no_bright_column() -> None:
    """Only the part above the level is searched for bright blobs (``np.clip(img, 0, None)``): the
    vacuum inside a dark ring is not a column, though the LoG of the unclipped ring peaks there."""
    yy, xx = np.mgrid[:64, :96]
    img = np.ones((64, 96))
    r = np.hypot(yy - 32, xx - 48)
    img[(r > 4) & (r < 8)] = 0.5
    assert len(detect_atoms(img, WHITE, SPEC)) == 0


def test_ssim_scores_an_image_of_exactly_the_window_size() -> None:
    """'skimage's default SSIM window: smaller images have no score': a 7 x 7 image has one."""
    img = np.eye(7) + 1.0
    assert ssim(img, img) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 7 x 7"):
        ssim(np.ones((6, 7)), np.ones((6, 7)))


def _cols(xy: list[tuple[float, float]]) -> dict:
    from training.evaluate.metrics import Z_PT

    n = len(xy)
    return {
        "xy": np.array(xy, np.float64),
        "species": np.full(n, Z_PT),
        "is_surface": np.ones(n, bool),
        "contrast": np.full(n, WHITE),
    }


def test_the_match_radius_is_in_angstrom_not_pixels() -> None:
    """'closer than match_A (default 1.2 A)': at 0.155 A / px a detection 3 px (0.47 A) off its column
    matches it."""
    from training.evaluate.metrics import match_detections

    c = match_detections(np.array([[23.0, 20.0]]), _cols([(20.0, 20.0)]), WHITE, SPEC, (40, 40))
    assert (c["surface"].tp, c["surface"].detected, c["surface"].truth) == (1, 1, 1)


def test_a_detection_exactly_match_A_away_does_not_match() -> None:
    """'a pair counts only when the centres are closer than match_A': at 0.25 A / px, 1 A is 4 px; a
    detection 4 px away is a false positive and the column a miss, one 3.9 px away a match."""
    from training.evaluate.metrics import match_detections

    spec = SPEC.model_copy(update={"pixel_size_A": 0.25, "match_A": 1.0})
    c = match_detections(np.array([[24.0, 20.0]]), _cols([(20.0, 20.0)]), WHITE, spec, (40, 40))
    assert (c["surface"].tp, c["surface"].detected, c["surface"].truth) == (0, 1, 1)
    c = match_detections(np.array([[23.9, 20.0]]), _cols([(20.0, 20.0)]), WHITE, spec, (40, 40))
    assert (c["surface"].tp, c["surface"].detected, c["surface"].truth) == (1, 1, 1)


def test_matching_maximises_the_pairs_within_reach_not_the_total_distance() -> None:
    """Pairs beyond match_A cannot count, so they must not steer the assignment: d2 sits on column A
    (0.5 px) and 7 px from B, d1 7 px from A and 8 px (beyond the 7.7 px reach) from B. The closest
    total pairing (d2-A, d1-B) has one valid pair; (d1-A, d2-B) has two, and counts both."""
    from training.evaluate.metrics import match_detections

    det = np.array([[26.4372, 22.75], [20.0, 20.5]])
    c = match_detections(det, _cols([(20.0, 20.0), (20.0, 27.5)]), WHITE, SPEC, (48, 48))
    assert (c["surface"].tp, c["surface"].detected, c["surface"].truth) == (2, 2, 2)


def _clean_image(surface: list[bool]) -> tuple[np.ndarray, dict]:
    """64 x 96, vacuum 1, three strong Pt columns and one faint one (as test_detection_metrics_values)."""
    yy, xx = np.mgrid[:64, :96]
    xy = [(20.0, 20.0), (20.0, 50.0), (44.0, 35.0), (44.0, 70.0)]
    img = np.ones((64, 96))
    for (r, c), a in zip(xy, [0.5, 0.5, 0.5, 0.1], strict=True):
        img += a * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.5**2))
    cols = _cols(xy)
    cols["is_surface"] = np.array(surface, bool)
    return img, cols


def test_calibration_breaks_a_tie_for_the_first_threshold_of_the_grid() -> None:
    """Thresholds 0.01 and 0.02 both find all four columns (mean F1 1): the first of the grid wins, as
    ``baselines.tune`` keeps its first best grid point, so the choice follows the configured order."""
    from training.evaluate.metrics import calibrate_threshold

    img, cols = _clean_image([True, True, False, False])
    for grid in ([0.02, 0.01, 1.0], [0.01, 0.02, 1.0]):
        best, scores = calibrate_threshold([img], [cols], SPEC, grid)
        assert scores[0.01] == scores[0.02] == 1.0
        assert best == grid[0]


def test_calibration_averages_only_classes_with_ground_truth() -> None:
    """'maximising mean F1 (surface + bulk)' over the classes an image has: with every column a
    surface column, a threshold that finds nothing scores 0, not the 0.5 an empty bulk class
    (F1 1 by convention) would add."""
    from training.evaluate.metrics import calibrate_threshold

    img, cols = _clean_image([True] * 4)
    _, scores = calibrate_threshold([img], [cols], SPEC, [0.01, 1.0])
    assert scores == pytest.approx({0.01: 1.0, 1.0: 0.0})


def test_num_sigma_1_searches_only_the_smallest_sigma() -> None:
    """``num_sigma`` LoG scales from the smallest to the largest sigma: with 1 only the smallest
    (0.3 A) is searched, where a blob of 3 A (19 px) is too flat to pass 0.05; with 2, 3 A is too."""
    yy, xx = np.mgrid[:96, :96]
    img = 1.0 + 0.5 * np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 19.4**2))
    spec = SPEC.model_copy(update={"sigma_A": (0.3, 3.0), "num_sigma": 1, "threshold": 0.05})
    assert len(detect_atoms(img, WHITE, spec)) == 0
    assert _near(detect_atoms(img, WHITE, spec.model_copy(update={"num_sigma": 2})), 48, 48)
