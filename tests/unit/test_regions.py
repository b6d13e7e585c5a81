"""Region maps from the atomic model, the model-free rule for foreign images, and region PSNR."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.regions import (
    PARTICLE,
    SUPPORT,
    VACUUM,
    TooSmall,
    edges_touched,
    region_map,
    region_psnrs,
    regions_from_clean,
)
from training.sim.structures import Z_CE, Z_O, Z_PT


def _columns() -> tuple[np.ndarray, np.ndarray]:
    sup = [(r, c) for r in range(70, 100, 4) for c in range(0, 100, 4)]
    pt = [(r, c) for r in range(40, 66, 5) for c in range(40, 60, 5)]
    xy = np.array(sup + pt, float)
    species = np.array([Z_CE if i % 2 else Z_O for i in range(len(sup))] + [Z_PT] * len(pt), np.uint8)
    return xy, species


def test_region_map_from_columns() -> None:
    xy, species = _columns()
    m = region_map((100, 100), xy, species, pixel_A=0.5)  # 2 A = 4 px
    assert m[5, 5] == VACUUM and m[50, 50] == PARTICLE and m[90, 10] == SUPPORT
    assert m[67, 50] == PARTICLE  # the particle wins where both reach (the interface)
    assert (m[:30] == VACUUM).all()
    assert set(np.unique(m)) == {VACUUM, SUPPORT, PARTICLE}


def test_regions_from_clean_image_without_model() -> None:
    rng = np.random.default_rng(0)
    img = np.ones((120, 120))
    yy, xx = np.mgrid[:120, :120]
    img[80:] += 0.3 * np.cos(xx[80:] * 1.3) * np.cos(yy[80:] * 1.1)  # a slab across the field
    blob = (yy - 60) ** 2 + (xx - 60) ** 2 < 15**2
    img[blob] += 0.3 * np.cos(xx[blob] * 1.5)  # a particle on it
    img += rng.normal(0, 1e-4, img.shape)
    m = regions_from_clean(img, pixel_A=0.25)
    assert m[5, 5] == VACUUM and m[110, 10] == SUPPORT and m[60, 60] == PARTICLE
    assert (m[100:] == SUPPORT).all()
    for k in (1, 2, 3):  # the support on the right, at the top, on the left: the same regions, turned
        assert np.array_equal(regions_from_clean(np.rot90(img, k), pixel_A=0.25), np.rot90(m, k))


def test_region_psnr_scores_only_the_region() -> None:
    clean = np.full((10, 10), 0.45)
    est = clean.copy()
    est[:5] += 0.1  # errors only in the top half
    regions = np.zeros((10, 10), np.uint8)
    regions[5:] = SUPPORT
    p = region_psnrs(clean, est, regions)
    assert p["support"] == float("inf") and abs(p["vacuum"] - 20.0) < 1e-9
    assert abs(p["whole"] - 10 * np.log10(1 / 0.005)) < 1e-9 and np.isnan(p["particle"])


def _slab_with_ragged_edge() -> np.ndarray:
    """A support slab across the bottom of 0.06 A pixels whose top edge steps 8 px (0.48 A) every 20 px."""
    img = np.ones((240, 240))
    yy, xx = np.mgrid[:240, :240]
    top = 150 + 8 * ((xx // 20) % 2)
    img[yy >= top] += (0.3 * np.cos(xx * 0.9) * np.cos(yy * 0.8))[yy >= top]
    return img


def test_a_support_only_frame_has_no_particle_sliver() -> None:
    """The partial lines along a support's ragged edge were particle: a support-only frame scored a
    phantom particle. Now a particle component thinner than 1 A joins the support it touches."""
    img = _slab_with_ragged_edge()
    m = regions_from_clean(img, pixel_A=0.06)
    assert not (m == PARTICLE).any(), (m == PARTICLE).mean()
    assert m[5, 5] == VACUUM and (m[170:] == SUPPORT).all()
    assert m[150, 30] == SUPPORT  # a tooth of the edge: specimen, with the support
    yy, xx = np.mgrid[:240, :240]
    blob = (yy - 70) ** 2 + (xx - 120) ** 2 < 30**2
    img[blob] += 0.3 * np.cos(xx[blob] * 1.5)  # a real particle stays one
    m = regions_from_clean(img, pixel_A=0.06)
    assert m[70, 120] == PARTICLE and m[150, 30] == SUPPORT and m[5, 5] == VACUUM


def test_an_all_vacuum_frame_with_numerical_ripple_is_vacuum() -> None:
    """A relative lattice threshold read 1e-4 ripple as lattice: the frame was skipped as "no vacuum"."""
    img = 1.0 + 1e-4 * np.random.default_rng(0).standard_normal((128, 128))
    assert (regions_from_clean(img, pixel_A=0.06) == VACUUM).all()
    assert (regions_from_clean(np.ones((128, 128)), pixel_A=0.06) == VACUUM).all()


def test_a_frame_under_the_2_A_window_is_refused_for_that_reason() -> None:
    with pytest.raises(TooSmall, match=r"32 x 40 px .* smaller than the 2 A window \(33 px at 0.06 A\)"):
        regions_from_clean(np.ones((32, 40)), pixel_A=0.06)
    assert regions_from_clean(np.ones((9, 9)), pixel_A=0.24).shape == (9, 9)  # 2 A = 9 px there


def test_edges_touched() -> None:
    m = np.zeros((10, 10), bool)
    assert edges_touched(m) == 0
    m[4:6, 4:6] = True
    assert edges_touched(m) == 0
    m[np.arange(10), np.arange(10)[::-1]] = True  # a diagonal: all four edges, at two corners
    assert edges_touched(m) == 4
