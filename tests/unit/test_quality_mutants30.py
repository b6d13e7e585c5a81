"""Seam and PSNR numbers of ``sbd_stream/compute/quality.py`` pinned by hand (mutation round h30).

``seam_step_ratio``: 'mean absolute pixel-to-pixel step across the hand-over lines divided by the mean
step everywhere else'; ``seam_error``: 'RMS difference ... in 4-px bands around the tile hand-over lines'.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sbd_stream.compute import quality


def _stepped() -> np.ndarray:
    """6 x 8: rows 0-2 at 0, rows 3-5 at 1 (a step across the line before row 3), plus 0.1 per column."""
    img = np.zeros((6, 8))
    img[3:] = 1.0
    return img + 0.1 * np.arange(8)[None, :]


def test_seam_step_ratio_takes_the_step_into_the_seam_row() -> None:
    """A seam at row 3 is the step between rows 2 and 3 (1.0); the other 4 row steps are 0 and the 7
    column steps 0.1: ratio 1 / (0.7 / 11)."""
    assert quality.seam_step_ratio(_stepped(), rows=[3], cols=[]) == pytest.approx(11 / 0.7)
    assert quality.seam_step_ratio(_stepped(), rows=[4], cols=[]) == pytest.approx(0.0)
    # columns: the same, turned
    assert quality.seam_step_ratio(_stepped().T, rows=[], cols=[3]) == pytest.approx(11 / 0.7)


def test_seam_step_ratio_of_a_stack_is_over_all_its_frames() -> None:
    stack = np.stack([_stepped(), 2 * _stepped()])
    assert quality.seam_step_ratio(stack, rows=[3], cols=[]) == pytest.approx(11 / 0.7)


def test_seam_lines_at_the_frame_edge_are_no_seams() -> None:
    """Lines 0 and the frame's size have no pixel before them: no step, ratio 1 (no seam seen)."""
    img = _stepped()
    assert quality.seam_step_ratio(img, rows=[0, 6], cols=[0, 8]) == 1.0


def test_seam_error_band_is_clipped_at_the_frame_edge() -> None:
    """A seam column 1 px from the left edge has the band columns 0-2 (not an empty slice from -1)."""
    whole = np.repeat(np.arange(8.0)[:, None], 8, axis=1)
    tiled = whole.copy()
    tiled[:, 0] += 1.0  # 1 of the band's 3 columns: RMS sqrt(1/3)
    assert quality.seam_error(tiled, whole, rows=[], cols=[1]) == pytest.approx(
        math.sqrt(1 / 3) / np.std(whole)
    )


def test_seam_error_without_seams_is_zero() -> None:
    a = np.arange(12.0).reshape(3, 4)
    assert quality.seam_error(a + 1, a, rows=[], cols=[]) == 0.0


def test_an_exact_estimate_has_infinite_psnr() -> None:
    a = np.arange(12.0).reshape(3, 4)
    assert quality.psnr(a, a) == float("inf")
    assert quality.paper_psnr(a / 12, a / 12) == float("inf")
