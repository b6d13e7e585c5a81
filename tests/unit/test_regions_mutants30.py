"""Region rules pinned where the mutation round h30 found no failing test.

Each test quotes the rule of ``training/evaluate/regions.py`` it pins; the frames are small and built by
hand so that only the rule under test decides the pixel asserted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from training.evaluate.regions import (
    PARTICLE,
    SUPPORT,
    VACUUM,
    _absorb_slivers,
    edges_touched,
    paper_psnr_in,
    region_fractions,
    region_map,
    region_psnrs,
    regions_from_clean,
)
from training.sim.structures import Z_PT


def test_a_column_is_seeded_at_its_rounded_pixel_not_its_truncated_one() -> None:
    """Columns at sub-pixel [row, col] positions seed the pixel nearest them: (10.7, 20.6) is (11, 21)."""
    m = region_map((32, 32), np.array([[10.7, 20.6]]), np.array([Z_PT]), pixel_A=1.0, radius_A=0.1)
    assert m[11, 21] == PARTICLE and m[10, 20] == VACUUM and (m == PARTICLE).sum() == 1


def test_faint_vacuum_fringes_stay_vacuum_under_a_lattice_of_a_fifth_of_the_frame() -> None:
    """'lattice contrast exceeds lattice_frac of its 99th percentile': fringes of 0.5 % in the vacuum
    (above LATTICE_FLOOR, far under the lattice's 30 %) are vacuum. A median-based threshold (the
    vacuum's own fringes) made the whole vacuum specimen."""
    yy, xx = np.mgrid[:128, :128]
    img = 1.0 + 0.005 * np.cos(xx * 0.9)
    disk = (yy - 64) ** 2 + (xx - 64) ** 2 < 30**2  # ~17 % of the frame
    img[disk] += 0.3 * np.cos(xx[disk] * 1.5) * np.cos(yy[disk] * 1.3)
    m = regions_from_clean(img, pixel_A=0.25)
    assert m[64, 64] == PARTICLE
    assert m[5, 5] == VACUUM and m[120, 120] == VACUUM


def test_the_vacuum_level_is_the_median_of_the_non_lattice_pixels() -> None:
    """'whose 1 A mean departs from the vacuum level by more than 5 %': the level is measured off the
    lattice. A lattice slab at mean 1.3 over 60 % of the frame read the whole frame's median as vacuum,
    so the real vacuum (1.0) departed from it and everything became specimen."""
    yy, xx = np.mgrid[:80, :80]
    img = np.ones((80, 80))
    img[:, :48] = 1.3 + 0.3 * np.cos(xx[:, :48] * 1.7) * np.cos(yy[:, :48] * 1.1)
    m = regions_from_clean(img, pixel_A=0.25)
    assert (m[:, :40] == SUPPORT).all()  # the slab spans the height from the left edge
    assert (m[:, 64:] == VACUUM).all()


def test_a_smooth_region_5_percent_off_the_vacuum_is_specimen() -> None:
    """A flat disk 20 % above the vacuum has no lattice contrast inside; its mean departs from the
    vacuum by more than 5 %, so its centre is specimen (a particle)."""
    yy, xx = np.mgrid[:128, :128]
    img = np.ones((128, 128))
    img[(yy - 64) ** 2 + (xx - 64) ** 2 < 40**2] = 1.2
    m = regions_from_clean(img, pixel_A=0.25)
    assert m[64, 64] == PARTICLE and m[3, 3] == VACUUM


def test_the_specimen_grows_by_1_A_not_by_1_px() -> None:
    """'grown by 1 A': one bright pixel at 0.25 A makes a 9 x 9 px lattice square (the 2 A window),
    grown by 4 px (4-connected): 8 px straight below the pixel is particle, 9 px is not."""
    img = np.ones((96, 96))
    img[48, 48] = 1.5
    m = regions_from_clean(img, pixel_A=0.25)
    assert m[48, 48] == PARTICLE
    assert m[56, 48] == PARTICLE and m[57, 48] == VACUUM
    assert m[48, 40] == PARTICLE and m[48, 39] == VACUUM


def test_a_row_exactly_95_percent_specimen_is_a_full_row() -> None:
    """'the run of specimen rows that span at least 95 % of the width': a slab across the bottom of a
    60 px frame whose rows are specimen over 57 px (95 % exactly) is support."""
    n = 60
    xx = np.arange(n)
    img = np.ones((n, n))
    img[n - 4 :, :55] += 0.3 * np.cos(xx[:55] * 2.1)[None]
    m = regions_from_clean(img, pixel_A=1.0)
    assert (m[n - 5 :] == SUPPORT).all() and (m[: n - 6] == VACUUM).all()
    img[n - 4 :, 54] = 1.0  # one column less: 56 px (93 %), a particle
    m = regions_from_clean(img, pixel_A=1.0)
    assert not (m == SUPPORT).any() and m[n - 1, 10] == PARTICLE


def test_a_run_of_exactly_5_percent_of_the_lines_is_a_support() -> None:
    """'a run of specimen rows ... from the top or bottom edge' of at least 5 % of them: 3 full rows of
    60 are support; the same 3 rows of 80 (3.75 %) stay particle."""
    for n, expect in ((60, SUPPORT), (80, PARTICLE)):
        img = np.ones((n, n))
        img[n - 1] += 0.3 * np.cos(np.arange(n) * 2.1)
        m = regions_from_clean(img, pixel_A=1.0)
        assert (m[n - 3 :] == expect).all(), n
        assert (m[: n - 3] == VACUUM).all()


def test_a_sliver_touching_the_support_only_through_a_diagonal_neighbour_sliver_joins_it() -> None:
    """Particle components are 8-connected: a 1 px sliver meeting another only at a corner is one
    component with it, and joins the support that the other touches (4-connected, the upper sliver
    was judged alone and went to the vacuum)."""
    regions = np.full((12, 12), VACUUM, np.uint8)
    regions[8:] = SUPPORT
    regions[7, 2:6] = PARTICLE  # lies on the support
    regions[6, 6:9] = PARTICLE  # touches the first only at its corner (6, 6) - (7, 5)
    _absorb_slivers(regions, 2.0)
    assert (regions[6, 6:9] == SUPPORT).all() and (regions[7, 2:6] == SUPPORT).all()


def test_edges_touched_counts_the_right_edge() -> None:
    m = np.zeros((6, 9), bool)
    m[2, -1] = True
    assert edges_touched(m) == 1
    m[-1, 4] = True
    assert edges_touched(m) == 2


def test_region_psnr_clamps_the_truth_too() -> None:
    """'counts clamped to [0, 1]' for both images: a truth of 1.2 counts and an estimate of 1.0 agree."""
    truth = np.full((4, 4), 1.2)
    est = np.full((4, 4), 1.0)
    assert paper_psnr_in(truth, est, np.ones((4, 4), bool)) == float("inf")
    truth[0, 0] = 0.9  # 0.1 off on 1 of 16 pixels: 10 log10(1600) dB
    assert paper_psnr_in(truth, est, np.ones((4, 4), bool)) == pytest.approx(10 * np.log10(1600))


def test_an_absent_region_is_nan_without_a_numpy_warning() -> None:
    regions = np.full((5, 7), VACUUM, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = region_psnrs(np.zeros((5, 7)), np.zeros((5, 7)), regions)
    assert np.isnan(r["particle"]) and np.isnan(r["support"]) and r["vacuum"] == float("inf")


def test_region_fractions_are_fractions_of_the_frame() -> None:
    regions = np.zeros((4, 5), np.uint8)
    regions[0, :2] = PARTICLE
    regions[1] = SUPPORT
    assert region_fractions(regions) == pytest.approx(
        {"vacuum": 13 / 20, "support": 5 / 20, "particle": 2 / 20}
    )
