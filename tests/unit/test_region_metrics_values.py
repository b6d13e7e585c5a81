"""Per-region paper PSNR and the region map's edges, pinned by hand on small non-square frames.

Why: the mutation audit (audit26, defect 9: G2; kill table: G3, G4) found that ``paper_psnr_in`` could
stop clamping the estimate (it then disagreed with ``quality.paper_psnr`` on the whole frame), that the
region radius could become exclusive, and that the sliver width could be misjudged, with no failing test.
Rules quoted from ``training/evaluate/regions.py``: "The paper code's PSNR (counts clamped to [0, 1], data
range 1 count) over the pixels of ``mask``"; "particle = within ``radius_A`` of a Pt column"; "a particle
component thinner than ``MIN_PARTICLE_A`` ... joins the support when it touches it, else the vacuum".
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sbd_stream.compute.quality import paper_psnr
from training.evaluate.regions import (
    PARTICLE,
    SUPPORT,
    VACUUM,
    _absorb_slivers,
    paper_psnr_in,
    region_map,
    region_psnrs,
)
from training.sim.structures import Z_CE, Z_PT


def _frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, estimate, regions) on 4 x 6: columns 0-1 vacuum, 2-3 support, 4-5 particle (8 px each).

    Vacuum: one estimate pixel at -1.0 counts, clamped to 0 against 0.5: MSE 0.25 / 8 = 1/32 (15.05 dB).
    Support: exact (inf). Particle (truth 0.9): estimates 2.0 and 1.7 clamp to 1.0, each 0.1 off:
    MSE 0.02 / 8 = 1/400 (26.02 dB). Whole frame: MSE 0.27 / 24 (19.49 dB).
    """
    regions = np.repeat(np.array([[VACUUM] * 2 + [SUPPORT] * 2 + [PARTICLE] * 2], np.uint8), 4, axis=0)
    truth = np.where(regions == PARTICLE, 0.9, 0.5)
    est = truth.copy()
    est[0, 0] = -1.0
    est[1, 4] = 2.0
    est[3, 5] = 1.7
    return truth, est, regions


def test_region_psnr_clamps_the_estimate_to_one_count() -> None:
    truth, est, regions = _frame()
    r = region_psnrs(truth, est, regions)
    assert r["vacuum"] == pytest.approx(10 * math.log10(32))
    assert r["support"] == math.inf
    assert r["particle"] == pytest.approx(10 * math.log10(400))
    assert r["whole"] == pytest.approx(10 * math.log10(24 / 0.27))


def test_whole_frame_region_psnr_is_the_paper_psnr() -> None:
    """The two implementations of the paper's metric agree, also where the estimate leaves [0, 1]."""
    truth, est, regions = _frame()
    assert region_psnrs(truth, est, regions)["whole"] == pytest.approx(paper_psnr(est, truth))
    mask = regions != SUPPORT
    assert paper_psnr_in(truth, est, mask) == pytest.approx(paper_psnr(est[mask], truth[mask]))


def test_region_psnr_of_an_absent_region_is_nan() -> None:
    truth, est, _ = _frame()
    r = region_psnrs(truth, est, np.full(truth.shape, VACUUM, np.uint8))
    assert math.isnan(r["particle"]) and math.isnan(r["support"])
    assert r["vacuum"] == pytest.approx(r["whole"])


def test_region_radius_is_inclusive() -> None:
    """At 0.5 A / px a 2 A radius is 4 px: the pixels exactly 4 px from a column's centre are in its region
    (49 lattice points with dy^2 + dx^2 <= 16; 45 if the radius were exclusive)."""
    xy = np.array([[10.0, 10.0], [10.0, 24.0]])
    m = region_map((21, 35), xy, np.array([Z_PT, Z_CE]), pixel_A=0.5, radius_A=2.0)
    assert int(np.sum(m == PARTICLE)) == 49
    assert int(np.sum(m == SUPPORT)) == 49
    for dr, dc in [(0, 4), (0, -4), (4, 0), (-4, 0), (2, 3)]:
        assert m[10 + dr, 10 + dc] == PARTICLE
        assert m[10 + dr, 24 + dc] == SUPPORT
    for dr, dc in [(0, 5), (3, 3), (-4, 1)]:  # 5, sqrt(18), sqrt(17) px
        assert m[10 + dr, 10 + dc] == VACUUM


def test_slivers_are_measured_by_their_full_width() -> None:
    """With a 2.5 px minimum width, a 3 px wide particle strip stays particle; 1 and 2 px wide strips are
    slivers: joined to the support they touch, else vacuum. (The width is the depth of the component drawn
    at twice the resolution: a 3 px strip has depth 2 in the middle, so its depth alone would call it a
    sliver; tests/unit/test_regions_sliver_width.py covers even widths and diagonals.)"""
    regions = np.full((20, 30), VACUUM, np.uint8)
    regions[15:, :] = SUPPORT
    regions[2:15, 5:8] = PARTICLE  # 3 px, touches the support
    regions[2:15, 12:14] = PARTICLE  # 2 px, touches the support
    regions[2:15, 17:18] = PARTICLE  # 1 px, touches the support
    regions[2:10, 22:24] = PARTICLE  # 2 px, in the vacuum
    before = regions.copy()
    _absorb_slivers(regions, 2.5)
    assert (regions[2:15, 5:8] == PARTICLE).all()
    assert (regions[2:15, 12:14] == SUPPORT).all()
    assert (regions[2:15, 17:18] == SUPPORT).all()
    assert (regions[2:10, 22:24] == VACUUM).all()
    assert int(np.sum(regions != before)) == 13 * 2 + 13 + 8 * 2
