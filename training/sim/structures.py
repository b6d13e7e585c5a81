"""Atomic models: faceted Pt nanoparticles on a CeO2(111) support, both in a [110] zone axis.

Frame (Angstrom): x = [11-2] along the support surface (periodic), y = [111] the surface normal (in the
image plane, vacuum above the support), z = [1-10] the beam direction. The support is periodic in x and
z, so the cell sizes are whole multiples of the fcc repeat lengths a*sqrt(6)/2 and a/sqrt(2). The
particle sits at the beam-entrance side of the slab (see docs/simulation.md) so that one multislice run
with exit planes yields every support thickness with the whole particle in it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

A_CEO2 = 5.411
A_PT = 3.924
PT_CEO2_GAP = 2.4
"""Distance from the top O layer of the support to the bottom Pt(111) layer (A)."""

ROTATION = np.array([np.array(v, float) / np.linalg.norm(v) for v in ([1, 1, -2], [1, 1, 1], [1, -1, 0])])
"""Rows: the cubic directions that become x, y, z."""

Z_PT, Z_CE, Z_O = 78, 58, 8


class ParticleClass(StrEnum):
    """Sec. 5.1: PtNp1/2 ~2 nm with / without an interface column, PtNp3 ~1 nm, PtNp4 ~3 nm."""

    PtNp1 = "PtNp1"
    PtNp2 = "PtNp2"
    PtNp3 = "PtNp3"
    PtNp4 = "PtNp4"


class ParticleShape(StrEnum):
    """fcc: the paper's faceted single crystals; decahedron / icosahedron: five-fold twinned particles
    (training/sim/twinned.py), which the paper's world does not hold."""

    fcc = "fcc"
    decahedron = "decahedron"
    icosahedron = "icosahedron"


class DefectClass(StrEnum):
    """Fig. A.5: none, one / two columns removed, one column at half occupancy, one single atom."""

    D0 = "D0"
    D1 = "D1"
    D2 = "D2"
    Dh = "Dh"
    Ds = "Ds"


PARTICLE_RADIUS_111 = {  # distance from the centre to the {111} facets (A), before jitter
    ParticleClass.PtNp1: 8.5,
    ParticleClass.PtNp2: 8.5,
    ParticleClass.PtNp3: 4.6,
    ParticleClass.PtNp4: 13.5,
}


class StructureParams(BaseModel):
    """Everything that determines one atomic model; the id is derived from it and the seed."""

    structure_id: str
    particle_class: ParticleClass
    defect_class: DefectClass
    seed: int
    particle_shape: ParticleShape = Field(
        ParticleShape.fcc, description="fcc (the paper's), or a twinned particle of the class's size"
    )
    cell_periods_x: int = Field(6, ge=2, description="cell width in units of a_CeO2*sqrt(6)/2 = 6.627 A")
    support_trilayers: int = Field(4, ge=1, description="O-Ce-O trilayers of the support (3.124 A each)")
    r111: float = Field(description="centre to {111} facets (A)")
    r100_ratio: float = Field(1.12, description="r100 / r111; sets the {100} truncation")
    base_ratio: float = Field(0.55, description="centre to the interface facet / r111 (wetting)")
    particle_x_frac: float = 0.5
    particle_z_A: float = Field(description="z of the particle centre (A); the beam enters at z = 0")
    support_step_trilayers: int = Field(
        0, ge=0, description="trilayers removed over part of the surface away from the particle (a terrace)"
    )
    support_step_span: tuple[float, float] = Field(
        (0.0, 0.0), description="start and width of the lowered terrace, fractions of the free surface"
    )
    support_vacancies: int = Field(0, ge=0, description="surface columns of the support partly emptied")

    @property
    def cell_x(self) -> float:
        return self.cell_periods_x * A_CEO2 * math.sqrt(6) / 2

    @property
    def cell_y(self) -> float:
        return self.cell_x


class SupportVariation(BaseModel):
    """How the support varies between models (paper App. A.2: "a faceted surface or one characterized by
    surface defects"); None in a preset keeps the flat, fixed-height support of the older worlds."""

    trilayers: tuple[int, int] = Field((4, 8), description="inclusive range of O-Ce-O trilayers")
    step_prob: float = Field(0.5, ge=0, le=1, description="chance of a lowered terrace (two surface steps)")
    max_vacancies: int = Field(3, ge=0, description="up to this many surface columns partly emptied")
    particle_x: tuple[float, float] = Field((0.35, 0.65), description="particle centre, fraction of the cell")


def make_params(
    index: int,
    particle_class: ParticleClass,
    defect_class: DefectClass,
    seed: int,
    cell_periods_x: int = 6,
    support_trilayers: int = 4,
    variation: SupportVariation | None = None,
    shape: ParticleShape = ParticleShape.fcc,
) -> StructureParams:
    """Seeded jitter of shape and placement, so structures of one class still differ.

    With ``variation`` the support's height, surface steps and vacancies and the particle's position are
    drawn too (from a second stream, so the older presets' structures stay what they were)."""
    rng = np.random.default_rng([seed, index])
    r111 = PARTICLE_RADIUS_111[particle_class] * rng.uniform(0.95, 1.08)
    depth = _particle_depth(r111)
    extra: dict[str, Any] = {}
    if variation is not None:
        vr = np.random.default_rng([seed, index, 11])
        cell = cell_periods_x * A_CEO2 * math.sqrt(6) / 2
        d111 = A_CEO2 / math.sqrt(3)
        n = int(vr.integers(variation.trilayers[0], variation.trilayers[1] + 1))
        height = 2.0 * r111  # the particle's extent along [111] is at most 2 r111
        if shape != ParticleShape.fcc:
            height += 3.0  # a twinned particle's size steps by one shell (~2.8 A) around 2 r111
        while n > 1 and (n - 0.5) * d111 + 1.0 + 0.5 * d111 + PT_CEO2_GAP + height > cell - 4.0:
            n -= 1
        step = int(vr.integers(1, 3)) if vr.uniform() < variation.step_prob and n >= 4 else 0
        extra = {
            "support_trilayers": n,
            "support_step_trilayers": step,
            "support_step_span": (float(vr.uniform(0, 1)), float(vr.uniform(0.3, 0.8))),
            "support_vacancies": int(vr.integers(0, variation.max_vacancies + 1)),
            "particle_x_frac": float(vr.uniform(*variation.particle_x)),
        }
    tag = "" if shape == ParticleShape.fcc else f"{shape.value}-"
    params = StructureParams(
        structure_id=f"s{index:03d}-{tag}{particle_class.value}-{defect_class.value}",
        particle_class=particle_class,
        defect_class=defect_class,
        seed=int(rng.integers(2**31)),
        particle_shape=shape,
        cell_periods_x=cell_periods_x,
        support_trilayers=support_trilayers,
        r111=float(r111),
        r100_ratio=float(rng.uniform(1.05, 1.2)),
        base_ratio=float(rng.uniform(0.45, 0.7)),
        particle_x_frac=float(rng.uniform(0.45, 0.55)),
        particle_z_A=float(depth / 2 + 1.0),
    )
    return params.model_copy(update=extra) if extra else params


def _particle_depth(r111: float) -> float:
    """Extent of the particle along the beam, [1-10]: bounded by {111} planes at r111."""
    return 2 * r111 * math.sqrt(3) / math.sqrt(2)


def _lattice(a: float, basis: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Positions (rotated frame) of a cubic lattice with basis, covering the box [lo, hi)."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cubic = corners @ ROTATION  # back to the cubic frame (ROTATION is orthogonal)
    nmin = np.floor(cubic.min(0) / a) - 1
    nmax = np.ceil(cubic.max(0) / a) + 1
    grid = np.stack(np.meshgrid(*[np.arange(nmin[i], nmax[i] + 1) for i in range(3)], indexing="ij"), -1)
    cells = grid.reshape(-1, 1, 3) + basis[None]
    pos = (cells.reshape(-1, 3) * a) @ ROTATION.T
    keep = np.all((pos >= lo) & (pos < hi), axis=1)
    return pos[keep]


FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
FLUORITE_O = np.array([[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)])


def support(
    params: StructureParams, thickness_A: float, keep_x: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """CeO2 slab, O-terminated (111) top; returns positions, atomic numbers and the top O layer y.

    ``keep_x`` (the particle's footprint, A) is left untouched by the surface step and vacancies."""
    d111 = A_CEO2 / math.sqrt(3)
    lx, lz = params.cell_x, thickness_A
    eps = 1e-3
    # Ce planes sit at y = n * d111; cut in the O-O gaps (half-way between Ce planes).
    y_lo, y_hi = -0.5 * d111 + eps, (params.support_trilayers - 0.5) * d111 + eps
    lo, hi = np.array([-eps, y_lo, -eps]), np.array([lx - eps, y_hi, lz - eps])
    ce = _lattice(A_CEO2, FCC, lo, hi)
    o = _lattice(A_CEO2, FLUORITE_O, lo, hi)
    pos = np.concatenate([ce, o])
    z = np.concatenate([np.full(len(ce), Z_CE), np.full(len(o), Z_O)])
    shift = 0.5 * d111 + 1.0  # bottom O layer ~1.8 A above y = 0
    pos[:, 1] += shift
    y_top = float(pos[z == Z_O, 1].max())
    if keep_x is not None and (params.support_step_trilayers or params.support_vacancies):
        pos, z = _surface_defects(pos, z, params, keep_x, y_top, d111)
    return pos, z, y_top


def _surface_defects(
    pos: np.ndarray,
    z: np.ndarray,
    params: StructureParams,
    keep_x: tuple[float, float],
    y_top: float,
    d111: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A lowered terrace (whole trilayers removed between two steps) and partly emptied surface columns,
    both on the free surface outside the particle's footprint (+ 2 A), seeded by the structure."""
    rng = np.random.default_rng([params.seed, 5])
    lx = params.cell_x
    lo, hi = keep_x[0] - 2.0, keep_x[1] + 2.0
    free = lx - (hi - lo)
    if free <= 4.0:
        return pos, z
    rel = np.mod(pos[:, 0] - hi, lx)  # distance along the free surface from the footprint's right end
    if params.support_step_trilayers:
        start, width = params.support_step_span
        a = start * (1 - width) * free
        b = a + width * free
        # Measured down from the top O, a trilayer's planes sit at 0 (O), 0.25 (Ce) and 0.5 (O) d111 and the
        # next trilayer's top O at 1.0: cut in the O-O gap below the n-th trilayer, a quarter d111 from either
        # O plane (a cut on a plane would keep or drop it by float rounding), so whole trilayers go.
        y_cut = y_top - (params.support_step_trilayers - 0.25) * d111
        drop = (rel >= a) & (rel < b) & (pos[:, 1] > y_cut) & (rel < free)
        pos, z, rel = pos[~drop], z[~drop], rel[~drop]
    if params.support_vacancies:
        labels = cluster_columns(pos[:, :2])
        k = labels.max() + 1
        cnt = np.bincount(labels, minlength=k)
        cx = np.bincount(labels, pos[:, 0], k) / cnt
        cy = np.bincount(labels, pos[:, 1], k) / cnt
        crel = np.mod(cx - hi, lx)
        # a surface column: nothing above it within 1.5 A in x (periodic), and on the free surface
        dx = np.abs((cx[:, None] - cx[None, :] + lx / 2) % lx - lx / 2)
        covered = ((dx < 1.5) & (cy[None, :] > cy[:, None] + 0.5)).any(1)
        cand = np.flatnonzero(~covered & (crel > 1.0) & (crel < free - 1.0) & (cnt >= 2))
        if len(cand):
            chosen = rng.choice(cand, size=min(params.support_vacancies, len(cand)), replace=False)
            keep = np.ones(len(pos), dtype=bool)
            for c in chosen:
                idx = np.flatnonzero(labels == c)
                keep[rng.choice(idx, size=max(1, int(len(idx) * rng.uniform(0.3, 1.0))), replace=False)] = (
                    False
                )
            pos, z = pos[keep], z[keep]
    return pos, z


def particle(params: StructureParams, y_base: float) -> np.ndarray:
    """Faceted Pt particle: fcc atoms inside {111} and {100} planes, truncated by the interface facet;
    or a twinned particle of the same size (``particle_shape``)."""
    if params.particle_shape != ParticleShape.fcc:
        from training.sim.twinned import twinned_particle

        x_c = params.particle_x_frac * params.cell_x
        pos, _ = twinned_particle(
            params.particle_shape.value, params.r111, params.seed, params.base_ratio, x_c, y_base
        )
        return pos
    r111, r100 = params.r111, params.r111 * params.r100_ratio
    base = params.base_ratio * r111
    span = np.full(3, max(r111, r100) * 1.8)
    pos = _lattice(A_PT, FCC, -span, span)  # centred on an atom at the origin
    cubic = pos @ ROTATION
    n111 = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)]) / math.sqrt(3)
    inside = np.all(cubic @ n111.T <= r111 + 1e-6, axis=1)
    inside &= np.all(np.abs(cubic) <= r100 + 1e-6, axis=1)
    inside &= pos[:, 1] >= -base - 1e-6  # the (-1-1-1) facet that wets the support
    pos = pos[inside]
    pos[:, 1] += y_base - pos[:, 1].min()
    pos[:, 0] += params.particle_x_frac * params.cell_x
    pos[:, 2] += params.particle_z_A
    return pos


def cluster_columns(xy: np.ndarray, tol: float = 0.35) -> np.ndarray:
    """Label atoms that share a projected column (within ``tol`` A); labels run 0..K-1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(xy).query_pairs(tol, output_type="ndarray")
    n = len(xy)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def _projected_neighbour_vectors() -> np.ndarray:
    """In-plane vectors to the nearest projected Pt columns of an ideal [110] fcc crystal."""
    pos = _lattice(A_PT, FCC, np.array([-8.0, -8, 0]), np.array([8.0, 8, A_PT / math.sqrt(2) - 1e-3]))
    d = np.linalg.norm(pos[:, :2], axis=1)
    first = np.sort(np.unique(np.round(d[d > 0.1], 3)))[0]
    return pos[np.abs(d - first) < 0.05, :2]


def surface_columns(col_xy: np.ndarray, y_interface: float) -> np.ndarray:
    """Pt column is surface if one of its ideal nearest projected neighbour sites is empty and lies
    above the interface (a site that would sit inside the support is not a free surface)."""
    from scipy.spatial import cKDTree

    vecs = _projected_neighbour_vectors()
    tree = cKDTree(col_xy)
    out = np.zeros(len(col_xy), dtype=bool)
    for i, c in enumerate(col_xy):
        sites = c + vecs
        dist, _ = tree.query(sites)
        empty = (dist > 0.5) & (sites[:, 1] > y_interface + 0.5)
        out[i] = bool(empty.any())
    return out


def _apply_defects(pos: np.ndarray, params: StructureParams, y_base: float) -> tuple[np.ndarray, list[dict]]:
    """Remove atoms at corner/edge columns (lowest projected coordination), never at the interface."""
    rng = np.random.default_rng(params.seed)
    info: list[dict] = []
    labels = cluster_columns(pos[:, :2])
    cols = np.array([pos[labels == k, :2].mean(0) for k in range(labels.max() + 1)])
    vecs = _projected_neighbour_vectors()
    from scipy.spatial import cKDTree

    tree = cKDTree(cols)
    coord = np.array([(tree.query(c + vecs)[0] < 0.5).sum() for c in cols])
    bottom = cols[:, 1] < y_base + 1.0

    if params.particle_class == ParticleClass.PtNp2:
        # PtNp2 = PtNp1 without one interface column: drop the outermost bottom-layer column.
        cand = np.flatnonzero(bottom)
        k = cand[np.argmax(np.abs(cols[cand, 0] - cols[cand, 0].mean()))]
        pos = pos[labels != k]
        info.append({"kind": "interface_column_removed", "xy": cols[k].tolist()})
        labels = cluster_columns(pos[:, :2])
        cols = np.array([pos[labels == j, :2].mean(0) for j in range(labels.max() + 1)])
        tree = cKDTree(cols)
        coord = np.array([(tree.query(c + vecs)[0] < 0.5).sum() for c in cols])
        bottom = cols[:, 1] < y_base + 1.0

    n_sites = {DefectClass.D0: 0, DefectClass.D1: 1, DefectClass.D2: 2, DefectClass.Dh: 1, DefectClass.Ds: 1}
    n = n_sites[params.defect_class]
    if n == 0:
        return pos, info
    cand = np.flatnonzero(~bottom & (coord < len(vecs)))
    if params.defect_class in (DefectClass.Dh, DefectClass.Ds):  # needs a column long enough to thin
        sizes = np.bincount(labels)
        if (sizes[cand] >= 4).any():
            cand = cand[sizes[cand] >= 4]
    cand = cand[np.argsort(coord[cand] + rng.uniform(0, 0.5, len(cand)))][: max(n, 3)]
    chosen = rng.choice(cand, size=n, replace=False)
    keep = np.ones(len(pos), dtype=bool)
    for k in chosen:
        idx = np.flatnonzero(labels == k)
        if params.defect_class in (DefectClass.D1, DefectClass.D2):
            drop = idx
        elif params.defect_class == DefectClass.Dh:
            drop = rng.choice(idx, size=len(idx) // 2, replace=False)
        else:  # Ds: keep the atom nearest the column's middle
            mid = idx[np.argmin(np.abs(pos[idx, 2] - pos[idx, 2].mean()))]
            drop = idx[idx != mid]
        keep[drop] = False
        info.append(
            {
                "kind": params.defect_class.value,
                "xy": cols[k].tolist(),
                "atoms_before": len(idx),
                "removed": len(drop),
            }
        )
    return pos[keep], info


def build(params: StructureParams, thickness_A: float) -> tuple[Any, dict[str, Any]]:
    """ASE Atoms of the support (``thickness_A`` along the beam) plus particle, and a description."""
    from ase import Atoms

    pt0 = particle(params, 0.0)
    sup, z_sup, y_top = support(params, thickness_A, keep_x=(float(pt0[:, 0].min()), float(pt0[:, 0].max())))
    y_base = y_top + PT_CEO2_GAP
    pt = particle(params, y_base)
    pt, defects = _apply_defects(pt, params, y_base)
    if pt[:, 2].max() > thickness_A or pt[:, 2].min() < 0:
        raise ValueError(
            f"particle spans z {pt[:, 2].min():.1f}..{pt[:, 2].max():.1f} A, beyond {thickness_A} A"
        )
    if pt[:, 1].max() > params.cell_y - 3.0:
        raise ValueError(
            f"particle top {pt[:, 1].max():.1f} A leaves no vacuum in a {params.cell_y:.1f} A cell"
        )
    numbers = np.concatenate([z_sup, np.full(len(pt), Z_PT)])
    atoms = Atoms(
        numbers=numbers,
        positions=np.concatenate([sup, pt]),
        cell=[params.cell_x, params.cell_y, thickness_A],
        pbc=True,
    )
    desc = params.model_dump(mode="json") | {
        "thickness_A": thickness_A,
        "n_pt": len(pt),
        "n_atoms": len(atoms),
        "y_support_top_A": y_top,
        "y_interface_A": y_base,
        "particle_extent_A": (pt.max(0) - pt.min(0)).tolist(),
        "defects": defects,
    }
    return atoms, desc


def support_layers_for(thickness_nm: float) -> int:
    """Whole [1-10] repeats (3.826 A) closest to a thickness."""
    return max(1, round(thickness_nm * 10 / (A_CEO2 / math.sqrt(2))))


Z_PERIOD = A_CEO2 / math.sqrt(2)
"""Repeat length of the support along the beam, [1-10]."""
