"""Five-fold twinned particles: symmetry of the drawn views, placement on the support, the world that holds
them, and files made before a world field existed still resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from training.sim.structures import (
    Z_PERIOD,
    Z_PT,
    DefectClass,
    ParticleClass,
    ParticleShape,
    build,
    make_params,
)
from training.sim.twinned import twinned_particle, twinned_positions
from training.sim.worlds import WORLDS, file_attrs, plan


def _seed_with_view(shape: str, view: str, radius: float = 8.5) -> int:
    for seed in range(200):
        if twinned_positions(shape, radius, seed)[1]["view"] == view:
            return seed
    raise AssertionError(f"no seed gives a {view} {shape}")


def _projection_symmetric(xy: np.ndarray, fold: int) -> bool:
    """Does turning the projected columns by 360/fold degrees map them onto themselves (within 0.2 A)?"""
    t = 2 * math.pi / fold
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    c = xy - xy.mean(0)
    d, _ = cKDTree(c).query(c @ rot.T)
    return bool(np.all(d < 0.2))


@pytest.mark.parametrize("shape", ["decahedron", "icosahedron"])
def test_five_fold_view_has_five_fold_axis_along_the_beam(shape: str) -> None:
    pos, info = twinned_positions(shape, 8.5, _seed_with_view(shape, "five-fold"))
    assert info["view"] == "five-fold"
    assert _projection_symmetric(pos[:, :2], 5)
    assert not _projection_symmetric(pos[:, :2], 4)  # the test can tell


def test_other_views_are_not_five_fold_and_sizes_follow_the_class() -> None:
    pos, _ = twinned_positions("icosahedron", 8.5, _seed_with_view("icosahedron", "three-fold"))
    assert _projection_symmetric(pos[:, :2], 3) and not _projection_symmetric(pos[:, :2], 5)
    pos, _ = twinned_positions("decahedron", 8.5, _seed_with_view("decahedron", "side"))
    assert not _projection_symmetric(pos[:, :2], 5)
    # ~1 / 2 / 3 nm across for the paper's class radii (PtNp3 / PtNp1 / PtNp4)
    for radius, lo, hi in ((4.6, 7, 12), (8.5, 14, 20), (13.5, 23, 30)):
        for shape in ("decahedron", "icosahedron"):
            pos, _ = twinned_positions(shape, radius, 3)
            width = float(np.max(np.ptp(pos, axis=0)))
            assert lo <= width <= hi, (shape, radius, width)
    # nearest neighbours at the Pt bond length: a real cluster, not a cloud
    pos, _ = twinned_positions("icosahedron", 8.5, 1)
    d, _ = cKDTree(pos).query(pos, k=2)
    assert 2.6 < np.median(d[:, 1]) < 2.85


def test_particle_wets_the_support_at_its_place() -> None:
    full, _ = twinned_particle("icosahedron", 8.5, 5, base_ratio=0.7, x_A=20.0, y_base=15.0)
    cut, _ = twinned_particle("icosahedron", 8.5, 5, base_ratio=0.45, x_A=20.0, y_base=15.0)
    assert len(cut) < len(full)
    for pos in (full, cut):
        assert pos[:, 1].min() == pytest.approx(15.0)
        assert 0.5 * (pos[:, 0].min() + pos[:, 0].max()) == pytest.approx(20.0)
        assert pos[:, 2].min() == pytest.approx(1.0)
    # a flat bottom: the lowest atoms of the cut particle form a layer wider than the full one's tip
    assert np.sum(cut[:, 1] < 15.5) > np.sum(full[:, 1] < 15.5)


def test_twins_world_plans_its_own_models_and_builds_them() -> None:
    world = WORLDS["paper-twins"]
    tasks = plan(world)
    shapes = [t.structure.particle_shape for t in tasks]
    assert len(tasks) == 64 and set(shapes) == {ParticleShape.decahedron, ParticleShape.icosahedron}
    ids = {t.structure.structure_id for t in tasks}
    assert not ids & {t.structure.structure_id for t in plan(WORLDS["paper"])}
    assert sum(t.test_view for t in tasks) >= 6  # held-out twinned models for the test split
    atoms, desc = build(tasks[8].structure, 12 * Z_PERIOD)
    pt = atoms.positions[atoms.numbers == Z_PT]
    assert desc["particle_shape"] == "icosahedron" and len(pt) > 50
    assert pt[:, 1].min() == pytest.approx(desc["y_interface_A"])
    assert pt[:, 1].max() < atoms.cell[1, 1] - 3.0


def test_twinned_particles_use_the_structures_lattice_constant() -> None:
    from training.sim import structures, twinned

    assert twinned.A_PT == structures.A_PT


def test_fcc_models_are_unchanged_by_the_shape_field() -> None:
    p = make_params(3, ParticleClass.PtNp1, DefectClass.D0, seed=11)
    assert p.particle_shape == ParticleShape.fcc and p.structure_id == "s003-PtNp1-D0"
    t = make_params(3, ParticleClass.PtNp1, DefectClass.D0, seed=11, shape=ParticleShape.decahedron)
    assert t.structure_id == "s003-decahedron-PtNp1-D0" and t.r111 == p.r111


def test_file_made_before_a_world_field_existed_still_resumes(tmp_path: Path) -> None:
    from training.sim.dataset import SimulatedDatasetWriter

    world = WORLDS["tiny"]
    attrs = file_attrs(world)
    old = json.loads(attrs["preset_json"])
    del old["particle_shapes"]  # as files made before twinned particles store their world
    del old["optics"]["focal_spread_range_nm"]
    path = tmp_path / "old.h5"
    SimulatedDatasetWriter(path, (96, 96), attrs | {"preset_json": json.dumps(old)}).close()
    SimulatedDatasetWriter(path, (96, 96), attrs).close()  # same world with today's defaults: resumes
    other = file_attrs(world.model_copy(update={"seed": 1}))
    with pytest.raises(ValueError, match="preset_json"):
        SimulatedDatasetWriter(path, (96, 96), other)
