"""Vacuum, support and particle regions of an image, and the paper's PSNR inside each.

Why: a frame that is two thirds vacuum scores a high whole-frame PSNR for any denoiser that flattens
vacuum, whatever it does to the atoms. Scoring each region apart shows what happens where the atoms are.

For simulated images the regions come from the atomic model (the projected columns stored with every
image): particle = within ``radius_A`` of a Pt column, support = within ``radius_A`` of a Ce or O column
(and not particle), vacuum = the rest. For someone else's clean images, which carry no model,
:func:`regions_from_clean` draws them from the clean image itself by a stated rule.
"""

from __future__ import annotations

import numpy as np

from training.sim.structures import Z_PT

VACUUM, SUPPORT, PARTICLE = 0, 1, 2
REGION_NAMES = {VACUUM: "vacuum", SUPPORT: "support", PARTICLE: "particle"}
COLUMN_RADIUS_A = 2.0
"""A column's region reaches this far: past the ~1 A column image, short of the next Pt column's centre
(2.40 A) plus its own radius, so particle and support fill solid areas with no holes."""


def _near(shape: tuple[int, int], rc: np.ndarray, radius_px: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    seeds = np.ones(shape, dtype=bool)
    if len(rc):
        idx = np.clip(np.rint(rc).astype(int), 0, np.array(shape) - 1)
        seeds[idx[:, 0], idx[:, 1]] = False
    else:
        return np.zeros(shape, dtype=bool)
    return distance_transform_edt(seeds) <= radius_px


def region_map(
    shape: tuple[int, int],
    xy: np.ndarray,
    species: np.ndarray,
    pixel_A: float,
    radius_A: float = COLUMN_RADIUS_A,
) -> np.ndarray:
    """uint8 map (VACUUM / SUPPORT / PARTICLE) from columns at [row, col] pixel positions."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    species = np.asarray(species).reshape(-1)
    r = radius_A / pixel_A
    out = np.full(shape, VACUUM, dtype=np.uint8)
    out[_near(shape, xy[species != Z_PT], r)] = SUPPORT
    out[_near(shape, xy[species == Z_PT], r)] = PARTICLE
    return out


def regions_from_clean(clean: np.ndarray, pixel_A: float, lattice_frac: float = 0.1) -> np.ndarray:
    """Regions of a clean image without an atomic model (e.g. a Dr. Probe TIFF).

    Specimen = pixels whose local standard deviation over 2 A (lattice contrast) exceeds ``lattice_frac``
    of its 99th percentile, or whose 1 A mean departs from the vacuum level by more than 5 %, grown by
    1 A (delocalised fringes in the vacuum have far less contrast than a lattice, so they stay vacuum);
    support = the run of specimen rows that span at least 95 % of the width from the top or bottom edge,
    or of columns that span 95 % of the height from the left or right edge (a support is a slab across
    the field, on whichever side the frame has it); particle = the rest of the specimen.
    """
    from scipy.ndimage import binary_dilation, gaussian_filter, uniform_filter

    img = np.asarray(clean, dtype=np.float64)
    win = max(3, int(2.0 / pixel_A)) | 1  # odd: centred, so a turned image gets the turned regions
    local_sd = np.sqrt(np.maximum(uniform_filter(img**2, win) - uniform_filter(img, win) ** 2, 0))
    specimen = local_sd > lattice_frac * float(np.percentile(local_sd, 99))
    vac = float(np.median(img[~specimen])) if (~specimen).any() else float(np.median(img))
    specimen |= np.abs(gaussian_filter(img, 1.0 / pixel_A) - vac) > 0.05 * abs(vac)
    specimen = binary_dilation(specimen, iterations=max(1, round(1.0 / pixel_A)))
    out = np.full(img.shape, VACUUM, dtype=np.uint8)
    out[specimen] = PARTICLE
    for axis in (1, 0):  # full rows (a support at the top or bottom), then full columns (left or right)
        full = specimen.mean(axis) >= 0.95
        n = full.size
        for lines in (np.arange(n), np.arange(n)[::-1]):  # the full lines touching either edge
            run = []
            for i in lines:
                if not full[i]:
                    break
                run.append(i)
            if len(run) >= 0.05 * n:
                if axis == 1:
                    out[run, :] = SUPPORT
                else:
                    out[:, run] = SUPPORT
    return out


def paper_psnr_in(clean_counts: np.ndarray, estimate_counts: np.ndarray, mask: np.ndarray) -> float:
    """The paper code's PSNR (counts clamped to [0, 1], data range 1 count) over the pixels of ``mask``."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float("nan")
    a = np.clip(np.asarray(clean_counts, dtype=np.float64)[m], 0.0, 1.0)
    b = np.clip(np.asarray(estimate_counts, dtype=np.float64)[m], 0.0, 1.0)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def region_psnrs(
    clean_counts: np.ndarray, estimate_counts: np.ndarray, regions: np.ndarray
) -> dict[str, float]:
    """Whole-frame and per-region paper PSNR (dB); a region absent from the image gives NaN."""
    out = {"whole": paper_psnr_in(clean_counts, estimate_counts, np.ones(regions.shape, dtype=bool))}
    for code, name in REGION_NAMES.items():
        out[name] = paper_psnr_in(clean_counts, estimate_counts, regions == code)
    return out


def region_fractions(regions: np.ndarray) -> dict[str, float]:
    return {name: float((regions == code).mean()) for code, name in REGION_NAMES.items()}
