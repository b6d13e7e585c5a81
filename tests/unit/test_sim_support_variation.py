"""The paper world's support (``SupportVariation``): its height, the lowered terrace of a surface step,
the partly emptied surface columns, and the particle's wetting facet, PtNp2 column and height cap.

Why: the support is half of every paper image and its surface is where engines fail first; these are the
promises of docs/simulation.md ("Structures", "The paper's world"), checked on the atoms ``build`` makes.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from training.sim.dataset import SimulatedDatasetWriter
from training.sim.structures import (
    A_CEO2,
    PT_CEO2_GAP,
    Z_CE,
    Z_O,
    Z_PERIOD,
    Z_PT,
    DefectClass,
    ParticleClass,
    StructureParams,
    SupportVariation,
    build,
    cluster_columns,
    make_params,
    particle,
    support,
)
from training.sim.worlds import WORLDS, file_attrs, plan

D111 = A_CEO2 / math.sqrt(3)  # one O-Ce-O trilayer, 3.124 A
THICK = 12 * Z_PERIOD  # 45.9 A along the beam: deeper than every particle, PtNp4 included


@cache
def _paper_models() -> tuple[StructureParams, ...]:
    return tuple({t.structure.structure_id: t.structure for t in plan(WORLDS["paper"])}.values())


def _support_atoms(params: StructureParams) -> tuple[np.ndarray, np.ndarray, dict]:
    """Support positions and atomic numbers of the built model, and its description."""
    atoms, desc = build(params, THICK)
    sup = atoms.numbers != Z_PT
    return atoms.positions[sup], atoms.numbers[sup], desc


def _removed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Mask over ``before``: the atoms that ``after`` no longer holds (both from the same lattice)."""
    kept = set(map(tuple, np.round(after, 3)))
    return np.array([tuple(p) not in kept for p in np.round(before, 3)])


def _footprint(params: StructureParams) -> tuple[float, float, float]:
    """(lo, hi, free): the particle's footprint (before its defects) + 2 A each side, and the free
    surface's length."""
    x = particle(params, 0.0)[:, 0]
    lo, hi = float(x.min()) - 2.0, float(x.max()) + 2.0
    return lo, hi, params.cell_x - (hi - lo)


def _levels(pos: np.ndarray, y_top: float) -> np.ndarray:
    """Depth of each atom's plane below the top O, in d111, to the nearest quarter (the (111) stacking:
    O 0, Ce 0.25, O 0.5 | O 1.0, Ce 1.25, O 1.5 | ...)."""
    return np.round((y_top - pos[:, 1]) / D111 * 4) / 4


def test_support_has_the_trilayers_asked_for_o_terminated_on_both_sides() -> None:
    for n in (2, 4, 7):
        params = make_params(0, ParticleClass.PtNp1, DefectClass.D0, seed=1, support_trilayers=n)
        pos, z, y_top = support(params, 4 * Z_PERIOD)
        levels = _levels(pos, y_top)
        assert len(np.unique(levels[z == Z_CE])) == n  # one Ce plane per trilayer
        assert len(np.unique(levels[z == Z_O])) == 2 * n
        expected = sorted(k + f for k in range(n) for f in (0.0, 0.25, 0.5))
        assert sorted(np.unique(levels)) == pytest.approx(expected)  # whole O-Ce-O trilayers, nothing else
        assert y_top == pytest.approx(pos[z == Z_O, 1].max()) and y_top > pos[z == Z_CE, 1].max()
        assert pos[:, 1].min() == pytest.approx(pos[z == Z_O, 1].min())  # O at the bottom too
        assert pos[:, 1].min() == pytest.approx(0.25 * D111 + 1.0)  # bottom O ~1.8 A above y = 0


def test_drawn_support_heights_cover_the_inclusive_range() -> None:
    """Small particles leave room for every height of 4-8 trilayers in the paper's 8-period cell."""
    drawn = {
        make_params(
            i, ParticleClass.PtNp3, DefectClass.D0, 5, 8, variation=SupportVariation()
        ).support_trilayers
        for i in range(40)
    }
    assert drawn == {4, 5, 6, 7, 8}


@pytest.mark.parametrize("periods", [6, 8])
def test_support_height_is_capped_so_every_particle_keeps_its_vacuum(periods: int) -> None:
    """``build`` refuses a particle whose top leaves under 3 A of vacuum; the drawn support height must
    leave room for the particle (of the largest class too) in the cell."""
    heights = []
    for i in range(24):
        for pc in (ParticleClass.PtNp4, ParticleClass.PtNp1):
            params = make_params(i, pc, DefectClass.D0, 7, periods, variation=SupportVariation())
            heights.append(params.support_trilayers)
            _, _, y_top = support(params, Z_PERIOD)
            top = particle(params, y_top + PT_CEO2_GAP)[:, 1].max()
            assert top <= params.cell_y - 3.0, (params.structure_id, params.support_trilayers)
    assert max(heights) >= 4  # the cap bounds the heights; it does not flatten them all


def _stepped(models: tuple[StructureParams, ...], depth: int, k: int) -> list[StructureParams]:
    return [m for m in models if m.support_step_trilayers == depth][:k]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_surface_step_removes_whole_trilayers(depth: int) -> None:
    """Over the lowered terrace every plane of the top ``depth`` trilayers is gone (3 per trilayer) and no
    plane below: the terrace is the next trilayer's top O, not an O-on-O double layer (audit R1)."""
    for m in _stepped(_paper_models(), depth, 3):
        flat = m.model_copy(update={"support_step_trilayers": 0, "support_vacancies": 0})
        before, z0, desc = _support_atoms(flat)
        after, _, _ = _support_atoms(m.model_copy(update={"support_vacancies": 0}))
        gone = _removed(before, after)
        assert len(before) - len(after) == gone.sum() > 0
        _, hi, free = _footprint(m)
        rel = np.mod(before[:, 0] - hi, m.cell_x)  # along the free surface from the footprint's right end
        assert (rel[gone] < free).all()  # never under the particle's footprint (+2 A)
        span = (rel >= rel[gone].min() - 1e-6) & (rel <= rel[gone].max() + 1e-6)  # the terrace's x range
        assert not gone[~span].any()
        levels = _levels(before, desc["y_support_top_A"])
        removed_planes = sorted(np.unique(levels[gone]))
        assert removed_planes == pytest.approx(sorted(k + f for k in range(depth) for f in (0.0, 0.25, 0.5)))
        assert gone[span & (levels < depth)].all(), m.structure_id  # every atom of those planes
        assert not gone[span & (levels >= depth)].any(), m.structure_id  # none below
        # the lowered terrace's surface is the top O of the next trilayer
        left = span & ~gone
        assert set(z0[left & (levels == levels[left].min())]) == {Z_O}
        assert levels[left].min() == depth
        # the terrace spans 30-80 % of the free surface (less at most one column spacing, 3.3 A)
        width = rel[gone].max() - rel[gone].min()
        assert 0.3 * free - 3.4 < width < 0.8 * free


def _columns(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = cluster_columns(pos[:, :2])
    k = labels.max() + 1
    cnt = np.bincount(labels, minlength=k)
    cxy = np.stack([np.bincount(labels, pos[:, i], k) / cnt for i in range(2)], 1)
    return labels, cnt, cxy


def _vacancies(m: StructureParams, n: int) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """Support atoms with the step but without vacancies, which of them ``n`` vacancies remove, the
    description, and the support atoms with the vacancies."""
    base, _, desc = _support_atoms(m.model_copy(update={"support_vacancies": 0}))
    after, _, _ = _support_atoms(m.model_copy(update={"support_vacancies": n}))
    return base, _removed(base, after), desc, after


def test_vacancies_partly_empty_surface_columns_of_the_free_surface() -> None:
    models = [m for m in _paper_models() if m.particle_class != ParticleClass.PtNp4][:6]
    n_emptied = 0
    for m in models:
        for step in sorted({0, m.support_step_trilayers}):
            params = m.model_copy(update={"support_step_trilayers": step})
            base, gone, desc, after = _vacancies(params, 3)
            labels, cnt, cxy = _columns(base)
            emptied = np.unique(labels[gone])
            assert 1 <= len(emptied) <= 3 and len(base) - len(after) == gone.sum()
            for c in emptied:
                k, size = gone[labels == c].sum(), cnt[c]
                # a drawn 30-100 % of the column's atoms, rounded down, at least one: never all of them
                assert max(1, math.floor(0.3 * size)) <= k < size, (m.structure_id, k, size)
                n_emptied += 1
                # a surface column: no support column above it within 1.5 A in x (periodic)
                dx = np.abs((cxy[:, 0] - cxy[c, 0] + m.cell_x / 2) % m.cell_x - m.cell_x / 2)
                assert not ((dx < 1.5) & (cxy[:, 1] > cxy[c, 1] + 0.5)).any(), m.structure_id
            if step == 0:  # a flat surface: only its top O plane is uncovered
                assert np.allclose(base[gone, 1], desc["y_support_top_A"]), m.structure_id
    assert n_emptied >= 6  # the draws did empty columns (1-3 per model asked for 3)


def test_vacancies_and_steps_never_touch_the_support_under_the_particle() -> None:
    """Even asked for 60 vacancies, more than the free surface has surface columns (so every candidate is
    emptied), and with the terrace, no support atom within the particle's footprint (+2 A) is removed."""
    for m in [m for m in _paper_models() if m.particle_class != ParticleClass.PtNp4][:4]:
        for step in sorted({0, m.support_step_trilayers}):
            params = m.model_copy(update={"support_step_trilayers": step, "support_vacancies": 0})
            flat, _, _ = _support_atoms(params)
            after, _, _ = _support_atoms(params.model_copy(update={"support_vacancies": 60}))
            gone = _removed(flat, after)
            lo, hi, _ = _footprint(m)
            assert gone.sum() > 0
            under = np.mod(flat[gone, 0] - lo, m.cell_x) <= hi - lo
            assert not under.any(), (m.structure_id, flat[gone][under, 0], (lo, hi))


def test_particle_is_cut_by_its_wetting_facet() -> None:
    """The (-1-1-1) interface facet sits at base_ratio * r111 below the centre and the top {111} facet at
    r111 above it, so the particle is at most (1 + base_ratio) r111 tall (a full one would be ~2 r111)."""
    for i in range(8):
        params = make_params(i, ParticleClass.PtNp1, DefectClass.D0, seed=3, cell_periods_x=8)
        pos = particle(params, 0.0)
        height = pos[:, 1].max() - pos[:, 1].min()
        assert height <= (1 + params.base_ratio) * params.r111 + 1e-6, (i, height, params.base_ratio)
        assert pos[:, 1].min() == pytest.approx(0.0)


def test_ptnp2_loses_its_outermost_interface_column() -> None:
    for i in range(4):
        p2 = make_params(
            i, ParticleClass.PtNp2, DefectClass.D0, seed=1, cell_periods_x=8, support_trilayers=5
        )
        p1 = p2.model_copy(update={"particle_class": ParticleClass.PtNp1})
        a1, d1 = build(p1, THICK)
        a2, d2 = build(p2, THICK)
        (info,) = d2["defects"]
        assert info["kind"] == "interface_column_removed"
        pt1 = a1.positions[a1.numbers == Z_PT]
        _, _, cxy = _columns(pt1)
        bottom = cxy[cxy[:, 1] < d1["y_interface_A"] + 1.0]
        x = info["xy"][0]
        assert np.abs(bottom[:, 0] - x).min() < 0.05  # it was an interface column of the PtNp1 model
        assert x == pytest.approx(bottom[:, 0].min()) or x == pytest.approx(bottom[:, 0].max())
        assert (a1.numbers == Z_PT).sum() - (a2.numbers == Z_PT).sum() >= 2


def test_a_file_made_before_the_step_fix_is_not_resumed(tmp_path: Path) -> None:
    """A `paper` file simulated before session 27 holds stepped models with an extra O row; appending
    today's models to it would mix the two kinds in one world. Its stored settings lack the step-cut key,
    so a resume is refused naming it (``sbd-train simulate`` says "use a new file")."""
    world = WORLDS["paper"]
    old = {k: v for k, v in file_attrs(world).items() if k != "support_steps"}
    path = tmp_path / "paper.h5"
    SimulatedDatasetWriter(path, (8, 8), old).close()
    with pytest.raises(ValueError, match=r"other settings \(support_steps\)"):
        SimulatedDatasetWriter(path, (8, 8), file_attrs(world))
    assert "support_steps" not in file_attrs(WORLDS["tiny"])  # flat-support worlds resume as before
