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


LATTICE_FLOOR = 0.001
"""Local contrast (standard deviation over 2 A) below this fraction of the vacuum level is never lattice.

Why: the lattice threshold is otherwise relative (``lattice_frac`` of the frame's 99th percentile), so an
all-vacuum frame with 1e-4 numerical ripple counted its ripple as lattice and was skipped for having
"no vacuum". 0.1 % is ten times that ripple, and far below any contrast Poisson frames can show."""
MIN_PARTICLE_A = 1.0
"""A particle component thinner than this (A) is a sliver, not a particle: see :func:`regions_from_clean`."""
LEDGE_A = 5.0
"""Particle pixels that no disk this wide (A) of particle covers, and that reach the support through such
pixels, are the support's partial top layer: see :func:`_absorb_ledges`."""


class TooSmall(ValueError):
    """A frame smaller than the window the region rule measures lattice contrast over."""


def regions_from_clean(clean: np.ndarray, pixel_A: float, lattice_frac: float = 0.1) -> np.ndarray:
    """Regions of a clean image without an atomic model (e.g. a Dr. Probe TIFF).

    Specimen = pixels whose local standard deviation over 2 A (lattice contrast) exceeds ``lattice_frac``
    of its 99th percentile and ``LATTICE_FLOOR`` of the vacuum level, or whose 1 A mean departs from the
    vacuum level by more than 5 %, grown by 1 A (delocalised fringes in the vacuum have far less contrast
    than a lattice, so they stay vacuum); support = the run of specimen rows that span at least 95 % of
    the width from the top or bottom edge, or of columns that span 95 % of the height from the left or
    right edge (a support is a slab across the field, on whichever side the frame has it); particle =
    the rest of the specimen, less its slivers: a particle component thinner than ``MIN_PARTICLE_A``
    (the partial lines along a support's ragged edge, 1-8 px wide) joins the support when it touches
    it, else the vacuum. A real particle is never that thin: the 1 A growth makes any specimen at least
    2 A across. Without that, a support-only frame scored a phantom "particle" of 0.6 % of its area,
    and the slivers were up to 13 % of a real particle's pixels. Before that, the support's partial top
    layer (a ledge ~3 A thick with its growth, wider than a sliver) joins the support: see
    :func:`_absorb_ledges`.

    Raises :class:`TooSmall` for a frame under the 2 A window on a side: its "lattice" cannot be told
    from vacuum there.
    """
    from scipy.ndimage import binary_dilation, gaussian_filter, uniform_filter

    img = np.asarray(clean, dtype=np.float64)
    win = max(3, int(2.0 / pixel_A)) | 1  # odd: centred, so a turned image gets the turned regions
    if min(img.shape) < win:
        h, w = img.shape
        raise TooSmall(
            f"the frame ({h} x {w} px = {h * pixel_A:.3g} x {w * pixel_A:.3g} A) is smaller than the "
            f"2 A window ({win} px at {pixel_A:.4g} A) over which the region rule measures lattice contrast: "
            f"it needs frames of at least {win} px a side at this pixel"
        )
    local_sd = np.sqrt(np.maximum(uniform_filter(img**2, win) - uniform_filter(img, win) ** 2, 0))
    rel = lattice_frac * float(np.percentile(local_sd, 99))
    flat = local_sd <= rel
    level = float(np.median(img[flat])) if flat.any() else float(np.median(img))
    specimen = local_sd > max(rel, LATTICE_FLOOR * abs(level))
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
    _absorb_ledges(out, LEDGE_A / pixel_A)
    _absorb_slivers(out, MIN_PARTICLE_A / pixel_A)
    return out


def _absorb_ledges(regions: np.ndarray, width_px: float) -> None:
    """The support's partial top layer joins the support, also where it touches a particle.

    Why: a support's last atomic layer is often partial; its lines are not whole, so they are not
    support lines, and the layer (~3 A thick with its 1 A growth, laterally as wide as the field) was
    particle: where it touched the particle it was one component with it, 30 % of the "particle" of an
    abTEM Pt-on-CeO2(111) frame. Rule: the particle's body is the union of the disks ``width_px`` across
    that fit in the particle (a morphological opening, by exact Euclidean distances: the same regions in
    all 8 orientations; the frame's edge is no edge of the particle); the particle pixels outside the body
    that reach the support through each other (8-neighbours) join it. A 1-3 nm particle (12 A and more
    with its growth) keeps its body; it loses only the tips of the corners where it meets the support at
    an acute angle (1.3 % of a particle seated against a support's side). A particle flatter than
    ``width_px`` lying on the support (a raft one or two atoms thick) is taken as support.
    """
    from scipy.ndimage import binary_dilation, distance_transform_edt, label

    particle = regions == PARTICLE
    support = regions == SUPPORT
    if not particle.any() or not support.any():
        return
    radius = width_px / 2
    core = distance_transform_edt(particle) > radius  # centres of the disks that fit
    body = np.zeros_like(particle)
    if core.any():
        body = (distance_transform_edt(~core) <= radius) & particle
    eight = np.ones((3, 3), bool)
    labels, _ = label(particle & ~body, structure=eight)
    touching = np.unique(labels[binary_dilation(support, eight)])
    touching = touching[touching > 0]
    regions[np.isin(labels, touching)] = SUPPORT


def _absorb_slivers(regions: np.ndarray, min_width_px: float) -> None:
    """Particle components thinner than ``min_width_px`` join the support when they touch it (they are
    its ragged edge: specimen, whose lattice would otherwise be scored as vacuum), else the vacuum.

    A component exactly ``min_width_px`` wide stays particle. Its width is :func:`_widths`'s."""
    from scipy.ndimage import binary_dilation, label

    particle = regions == PARTICLE
    labels, n = label(particle, structure=np.ones((3, 3), bool))
    if n == 0:
        return
    for k in np.flatnonzero(_widths(labels, n) < min_width_px) + 1:
        comp = labels == k
        ring = regions[binary_dilation(comp, np.ones((3, 3), bool)) & ~comp]
        regions[comp] = SUPPORT if (ring == SUPPORT).any() else VACUUM


def _widths(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) width in pixels of each labelled component 1..n: twice its greatest depth, measured on the
    component drawn at twice the resolution.

    Why twice the resolution: ``distance_transform_edt`` gives the distance to the nearest zero pixel
    *centre*, so a stripe w px wide has depth ``min(i + 1, w - i)`` at its i-th pixel, greatest
    ``ceil(w / 2)``: ``2 * depth - 1`` is right for odd w and one pixel short for even w (a 2 px stripe
    read 1 px, a 4 px one 3 px), and depth alone cannot tell w = 2k - 1 from 2k. Drawn with each pixel
    as 2 x 2, every stripe is 2w sub-pixels wide, an even number, whose depth is exactly w sub-pixels,
    for odd and even w alike. A diagonal stripe n px across each row reads its perpendicular thickness
    (n / sqrt 2 for even n, within 0.12 px above it for odd n >= 3; a 1 px line reads 1 px), where
    ``2 * depth - 1`` read pairs of n alike (1.0 for n = 1 and 2, 1.83 for 3 and 4). The frame's edge
    stays no edge of a component, as before.
    Each component is measured in its own bounding box grown by a pixel (clipped to the frame): its
    nearest pixel outside it is always a non-particle pixel in that box, so the depths are those of the
    whole frame doubled, without four times the frame's memory for a large frame.
    """
    from scipy.ndimage import distance_transform_edt, find_objects

    out = np.zeros(n)
    for k, sl in enumerate(find_objects(labels), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(a.start - 1, 0), a.stop + 1) for a in sl)
        comp = labels[box] == k
        out[k - 1] = distance_transform_edt(comp.repeat(2, 0).repeat(2, 1)).max()
    return out


def edges_touched(mask: np.ndarray) -> int:
    """How many of the frame's four edges ``mask`` reaches."""
    m = np.asarray(mask, dtype=bool)
    return int(m[0].any()) + int(m[-1].any()) + int(m[:, 0].any()) + int(m[:, -1].any())


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
