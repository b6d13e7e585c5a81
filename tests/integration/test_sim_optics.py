"""Worlds that draw each image's optics (focal spread, vibration): drawn in range, per image, recorded."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from training.sim.dataset import OPTICS_META_FIELDS, SimulatedDataset
from training.sim.imaging import Optics
from training.sim.simulate import simulate
from training.sim.worlds import WORLDS


def test_draw_is_seeded_in_range_and_leaves_fixed_optics_alone() -> None:
    fixed = Optics()
    assert fixed.draw(np.random.default_rng(0)) is fixed
    ranged = Optics(focal_spread_range_nm=(2.0, 6.0), vibration_range_pm=(0.0, 60.0))
    a = [ranged.draw(np.random.default_rng([5, 1])) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same optics
    draws = [ranged.draw(np.random.default_rng(s)) for s in range(50)]
    fs = np.array([o.focal_spread_nm for o in draws])
    vib = np.array([o.vibration_pm for o in draws])
    assert fs.min() >= 2.0 and fs.max() <= 6.0 and fs.std() > 0.5
    assert vib.min() >= 0.0 and vib.max() <= 60.0 and vib.std() > 5.0
    paper = WORLDS["paper-optics"]
    assert paper.optics.focal_mode == "envelope" and paper.optics.focal_spread_range_nm == (2.0, 6.0)
    assert paper.n_structures == WORLDS["paper"].n_structures  # the paper's models, other optics


@pytest.mark.slow
@pytest.mark.integration
def test_ranged_world_records_each_images_optics(tmp_path: Path) -> None:
    world = WORLDS["tiny"].model_copy(
        update={
            "optics": Optics(
                focal_mode="envelope", focal_spread_range_nm=(2.0, 6.0), vibration_range_pm=(0.0, 60.0)
            )
        }
    )
    out = tmp_path / "t.h5"
    summary = simulate(world, out, max_tasks=1, progress=False)
    assert summary["failed"] == []
    with SimulatedDataset(out) as ds:
        meta = ds.meta_table()
        fs, vib = meta["focal_spread_nm"], meta["vibration_pm"]
        assert len(fs) == 6 and np.all((fs >= 2.0) & (fs <= 6.0)) and np.all((vib >= 0) & (vib <= 60))
        # one draw per defocus (both thicknesses of an image stack share it), differing between defoci
        per_df = {float(d): (float(f), float(v)) for d, f, v in zip(meta["defocus_nm"], fs, vib, strict=True)}
        assert len(per_df) == 3 and len(set(per_df.values())) == 3
    # a file made before per-image optics existed (no such columns) is still read, and resumed
    with h5py.File(out, "a") as f:
        for name in OPTICS_META_FIELDS:
            del f["meta"][name]
    with SimulatedDataset(out) as ds:
        assert "focal_spread_nm" not in ds.meta_table() and len(ds) == 6
    summary = simulate(world, out, max_tasks=1, progress=False)
    with SimulatedDataset(out) as ds:
        assert len(ds) == 12
