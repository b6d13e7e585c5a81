"""Column detection on plateaus: exact ties of the response keep only the first in row-major order.

``first_of_ties`` (compute/likelihood_filters.py): "keeping the first makes the kept ones at least m + 1
pixels apart, so a frame has at most one column per m x m square" -- without it a 256^2 frame of bright
lines every 8 px gave 8,192 "columns". ``LikelihoodStage.detect``: "Of exact ties within a neighbourhood
(a plateau) only the first in row-major order counts, so columns are more than m pixels apart". A row
plateau (horizontal lines) needs the ties *earlier on the same row* suppressed, a column plateau
(vertical lines) the ties on earlier rows: both are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbd_stream.compute.likelihood import LikelihoodConfig, detect_columns
from sbd_stream.compute.likelihood_filters import first_of_ties

SIZE = 128
CFG = LikelihoodConfig(pixel_size_A=0.24, vacuum_mode="fixed", vacuum_counts=0.45)


def _lines(axis: int) -> np.ndarray:
    img = np.full((SIZE, SIZE), 0.45, np.float32)
    if axis == 0:
        img[::8, :] = 3.0  # horizontal bright lines: a plateau along each row
    else:
        img[:, ::8] = 3.0  # vertical bright lines: a plateau along each column
    return img


def _assert_spread(pos: np.ndarray, m: int, h: int, w: int) -> None:
    assert len(pos) <= (-(-h // (m + 1))) * (-(-w // (m + 1))), len(pos)
    d = np.abs(pos[:, None, :] - pos[None, :, :]).max(-1)  # Chebyshev distance: within a (2m+1)^2 square
    np.fill_diagonal(d, m + 1)
    assert d.min() > m, f"two kept columns only {d.min()} px apart (m = {m})"


@pytest.mark.parametrize("axis", [0, 1], ids=["horizontal-lines", "vertical-lines"])
def test_lines_give_at_most_one_column_per_square(axis: int) -> None:
    m = CFG.min_distance_px
    assert m >= 1
    pos = detect_columns(_lines(axis), CFG)[0].numpy().astype(int)
    assert len(pos) > 0  # lines are bright enough to be detected at all
    _assert_spread(pos, m, SIZE, SIZE)


def test_first_of_ties_keeps_the_first_in_row_major_order() -> None:
    """A row of tied candidates and a column of tied candidates: only the first of each survives."""
    m = 2
    cand = torch.zeros((2, 12, 12), dtype=torch.bool)
    cand[0, 5, 3:9] = True  # a run along a row
    cand[1, 2:8, 6] = True  # a run along a column
    cand[1, 10, 0] = True  # far from the run: kept
    kept = first_of_ties(cand, m).tolist()
    assert kept == [[0, 5, 3], [1, 2, 6], [1, 10, 0]]
    # ties earlier on the same row, right at the edge of the square, also count
    edge = torch.zeros((1, 6, 10), dtype=torch.bool)
    edge[0, 3, 2] = edge[0, 3, 2 + m] = edge[0, 3, 2 + 2 * m + 1] = True
    assert first_of_ties(edge, m).tolist() == [[0, 3, 2], [0, 3, 2 + 2 * m + 1]]
