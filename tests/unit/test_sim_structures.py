"""Atomic models: lattice spacings, a vacuum region, a particle, defects and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.sim.structures import (
    A_CEO2,
    A_PT,
    Z_CE,
    Z_O,
    Z_PERIOD,
    Z_PT,
    DefectClass,
    ParticleClass,
    build,
    cluster_columns,
    make_params,
)


def _model(pc: ParticleClass = ParticleClass.PtNp1, dc: DefectClass = DefectClass.D0, layers: int = 8):
    return build(make_params(3, pc, dc, seed=11), layers * Z_PERIOD)


def test_support_lattice_spacings() -> None:
    atoms, desc = _model()
    pos, num = atoms.positions, atoms.numbers
    ce = pos[num == Z_CE]
    planes = np.unique(np.round(ce[:, 1], 2))
    np.testing.assert_allclose(np.diff(planes), A_CEO2 / math.sqrt(3), atol=0.01)  # (111) 3.124 A
    # Along the beam, Ce atoms of one column repeat every a/sqrt(2) = 3.826 A.
    col = ce[np.abs(ce[:, 0] - ce[0, 0]) + np.abs(ce[:, 1] - ce[0, 1]) < 0.05]
    np.testing.assert_allclose(np.diff(np.sort(col[:, 2])), A_CEO2 / math.sqrt(2), atol=0.01)
    # Fluorite: each Ce has 8 O neighbours at a*sqrt(3)/4 = 2.343 A (interior Ce only).
    o = pos[num == Z_O]
    inner = ce[(ce[:, 1] > planes[1] - 0.1) & (ce[:, 1] < planes[-2] + 0.1)]
    c = inner[len(inner) // 2]
    d = np.linalg.norm(
        ((o - c + atoms.cell.lengths() / 2) % atoms.cell.lengths()) - atoms.cell.lengths() / 2, axis=1
    )
    assert (np.abs(d - A_CEO2 * math.sqrt(3) / 4) < 0.01).sum() == 8
    assert desc["y_interface_A"] - desc["y_support_top_A"] == pytest.approx(2.4)


def test_particle_is_fcc_pt_with_vacuum_above() -> None:
    atoms, desc = _model()
    pt = atoms.positions[atoms.numbers == Z_PT]
    assert len(pt) == desc["n_pt"] > 100
    d = np.linalg.norm(pt[:, None] - pt[None], axis=-1)
    nearest = np.sort(d, axis=1)[:, 1]
    np.testing.assert_allclose(np.median(nearest), A_PT / math.sqrt(2), atol=0.01)  # 2.775 A
    assert pt[:, 1].min() == pytest.approx(desc["y_interface_A"])
    vacuum = atoms.cell[1, 1] - atoms.positions[:, 1].max()
    assert vacuum > 3.0
    extent = desc["particle_extent_A"]
    assert 14 < extent[0] < 24  # PtNp1 is ~2 nm wide
    # Projected along the beam the particle is made of [1-10] columns 2.775 A apart along z.
    labels = cluster_columns(pt[:, :2])
    big = np.argmax(np.bincount(labels))
    np.testing.assert_allclose(np.diff(np.sort(pt[labels == big, 2])), A_PT / math.sqrt(2), atol=0.01)


@pytest.mark.parametrize(
    ("pc", "lo", "hi"),
    [(ParticleClass.PtNp3, 6, 13), (ParticleClass.PtNp1, 14, 24), (ParticleClass.PtNp4, 26, 36)],
)
def test_particle_sizes(pc: ParticleClass, lo: float, hi: float) -> None:
    params = make_params(0, pc, DefectClass.D0, seed=1, cell_periods_x=8, support_trilayers=5)
    _, desc = build(params, 10 * Z_PERIOD)
    assert lo < desc["particle_extent_A"][0] < hi


@pytest.mark.parametrize(
    ("dc", "removed"),
    [(DefectClass.D1, "all"), (DefectClass.D2, "all"), (DefectClass.Dh, "half"), (DefectClass.Ds, "single")],
)
def test_defects_remove_atoms_from_surface_columns(dc: DefectClass, removed: str) -> None:
    ref, _ = _model(dc=DefectClass.D0)
    atoms, desc = _model(dc=dc)
    n_ref, n = (ref.numbers == Z_PT).sum(), (atoms.numbers == Z_PT).sum()
    info = [d for d in desc["defects"] if d["kind"] == dc.value]
    assert len(info) == (2 if dc == DefectClass.D2 else 1)
    assert n_ref - n == sum(d["removed"] for d in info)
    for d in info:
        left = d["atoms_before"] - d["removed"]
        assert {
            "all": left == 0,
            "half": left == d["atoms_before"] - d["atoms_before"] // 2,
            "single": left == 1,
        }[removed]
        assert d["xy"][1] > desc["y_interface_A"] + 1.0  # never at the interface


def test_ptnp2_lacks_an_interface_column() -> None:
    a1, _ = _model(ParticleClass.PtNp1)
    a2, d2 = _model(ParticleClass.PtNp2)
    kinds = [d["kind"] for d in d2["defects"]]
    assert kinds == ["interface_column_removed"]
    assert (a2.numbers == Z_PT).sum() < (a1.numbers == Z_PT).sum()


def test_seeded_and_reproducible() -> None:
    a, da = _model(dc=DefectClass.D2)
    b, db = _model(dc=DefectClass.D2)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert da == db
    other, _ = build(make_params(4, ParticleClass.PtNp1, DefectClass.D2, seed=11), 8 * Z_PERIOD)
    assert len(other) != len(a) or not np.allclose(other.positions, a.positions)
