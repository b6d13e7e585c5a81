"""Region maps from the atomic model, the model-free rule for foreign images, and region PSNR."""

from __future__ import annotations

import numpy as np

from training.evaluate.regions import PARTICLE, SUPPORT, VACUUM, region_map, region_psnrs, regions_from_clean
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
