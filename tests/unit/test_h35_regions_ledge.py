"""The support's partial top layer (a ledge) is support, also where it touches the particle.

Rule quoted from ``training/evaluate/regions.py`` (``_absorb_ledges``): "the particle's body is the union of
the disks ``width_px`` across that fit in the particle ...; the particle pixels outside the body that reach
the support through each other (8-neighbours) join it." Before it, a support's partial top layer (~3 A
thick with its 1 A growth, so no sliver) was particle: joined to the particle where it touched it, a
particle of its own where it did not (user audit h35 D5: 30 % of the "particle" of an abTEM
Pt-on-CeO2(111) frame was that layer).
"""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.regions import PARTICLE, SUPPORT, VACUUM, _absorb_ledges, regions_from_clean

PIXEL_A = 0.12
CENTRE, RADIUS = (96, 150), 40  # a particle ~1 nm across (9.6 A, 11.6 A with its growth)


def _frame() -> np.ndarray:
    """A support slab from row 176 down, its partial top layer in rows 156-175 (2.4 A) at columns 0-219
    (under the particle) and 280-319 (alone), and a particle sitting on that layer. With the 2 A contrast
    window and the 1 A growth, rows 164 and below are whole lines (support), rows 140-163 the ledge."""
    img = np.ones((240, 320))
    yy, xx = np.mgrid[:240, :320]
    lattice = 0.3 * np.cos(xx * 0.9) * np.cos(yy * 0.8)
    layer = (yy >= 156) & (yy < 176) & ((xx < 220) | (xx >= 280))
    slab = (yy >= 176) | layer
    img[slab] += lattice[slab]
    blob = (yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 <= RADIUS**2
    img[blob] += 0.3 * np.cos(xx[blob] * 1.5)
    return img


def _blob() -> np.ndarray:
    yy, xx = np.mgrid[:240, :320]
    return (yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 <= RADIUS**2


def test_the_partial_top_layer_is_support_and_the_particle_stays_particle() -> None:
    """The layer left of the particle (touching it: one component with it before) and the piece on the
    right (a particle of its own before, 2.9 A thick) are support; the particle is whole. Before, the
    "particle" was 1.5 times the particle's area."""
    m = regions_from_clean(_frame(), PIXEL_A)
    assert (m[176:] == SUPPORT).all()
    assert (m[140:176, :90] == SUPPORT).all()  # the layer away from the particle, on its left
    assert (m[140:176, 290:] == SUPPORT).all()  # the layer's piece that never touched the particle
    assert (m[_blob()] == PARTICLE).all()  # the particle, every pixel of it
    assert m[5, 5] == VACUUM and m[145, 250] == VACUUM  # above the frame, the layer's gap
    grown = np.pi * (RADIUS + 2.0 / PIXEL_A) ** 2  # grown by the 2 A window's half and by 1 A
    assert 0.95 < (m == PARTICLE).sum() / grown < 1.1, (m == PARTICLE).sum() / grown  # 1.06; 1.50 before


@pytest.mark.parametrize("k", range(1, 8))
def test_the_rule_gives_the_same_regions_in_all_8_orientations(k: int) -> None:
    """The support at the bottom, right, top, left, and each transposed: the same regions, turned."""

    def turn(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k % 4)
        return np.ascontiguousarray(a.T if k >= 4 else a)

    img = _frame()
    turned = regions_from_clean(turn(img), PIXEL_A)
    ledge = np.zeros(img.shape, bool)
    ledge[140:176, :90] = ledge[140:176, 290:] = True
    assert (turned[turn(ledge)] == SUPPORT).all() and (turned[turn(_blob())] == PARTICLE).all()
    assert np.array_equal(turned, turn(regions_from_clean(img, PIXEL_A)))


def _mask_scene() -> np.ndarray:
    """Support rows 40-59; a 3 px ledge in rows 37-39 at columns 0-49 and 60-79; a disk of radius 12
    on it at (24, 30); a 3 px strip floating in the vacuum at rows 5-7, columns 55-75."""
    regions = np.full((60, 80), VACUUM, np.uint8)
    regions[40:] = SUPPORT
    regions[37:40, :50] = PARTICLE
    regions[37:40, 60:] = PARTICLE
    yy, xx = np.mgrid[:60, :80]
    regions[(yy - 24) ** 2 + (xx - 30) ** 2 <= 12**2] = PARTICLE
    regions[5:8, 55:76] = PARTICLE
    return regions


def test_on_masks_only_thin_particle_reaching_the_support_joins_it() -> None:
    """At a 5 px width: the ledge (3 px) joins the support on both sides of the gap, except within the
    fillet where it meets the disk; the disk (less the one-pixel tips of its digital outline, the bottom
    one a 1 px neck onto the ledge) and the floating strip (thin, but not touching the support: the
    sliver rule's business) stay particle."""
    regions = _mask_scene()
    before = regions.copy()
    _absorb_ledges(regions, 5.0)
    assert (regions[37:40, :10] == SUPPORT).all() and (regions[37:40, 60:] == SUPPORT).all()
    yy, xx = np.mgrid[:60, :80]
    assert (regions[(yy - 24) ** 2 + (xx - 30) ** 2 < 12**2] == PARTICLE).all()
    assert (regions[5:8, 55:76] == PARTICLE).all()
    changed = regions != before
    assert (before[changed] == PARTICLE).all() and (regions[changed] == SUPPORT).all()
    assert changed[37:40].sum() >= 0.8 * (before[37:40] == PARTICLE).sum() - 25  # the ledge, less the disk
    without = _mask_scene()
    without[40:] = VACUUM  # no support: nothing to join
    _absorb_ledges(without, 5.0)
    assert np.array_equal(without, np.where(before == SUPPORT, VACUUM, before))


def test_on_masks_a_particle_cut_by_the_frame_edge_keeps_its_body_there() -> None:
    """The frame's edge is no edge of the particle: a particle cut by the left edge (a quarter disk of
    radius 16 seated on the support's ledge) keeps the pixels along that edge (an erosion with the
    outside as background would thin it there, and its strip along the edge would reach the support and
    join it); the ledge away from it joins the support."""
    regions = np.full((60, 60), VACUUM, np.uint8)
    regions[40:] = SUPPORT
    regions[37:40, :] = PARTICLE  # the ledge, from the frame's left edge to its right
    yy, xx = np.mgrid[:60, :60]
    quarter = ((yy - 37) ** 2 + xx**2 < 16**2) & (yy < 37)
    regions[quarter] = PARTICLE
    _absorb_ledges(regions, 5.0)
    assert (regions[22:40, 0] == PARTICLE).all()
    assert (regions[quarter] == PARTICLE).mean() > 0.97
    assert (regions[37:40, 25:] == SUPPORT).all()
