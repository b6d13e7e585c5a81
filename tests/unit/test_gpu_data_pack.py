"""The GPU lease's data transfer: a packed training set unpacks to the trainer's format, within the step."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.gpu_data_pack import pack, unpack
from training.sim.dataset import SimulatedDataset
from training.sim.synthetic_data import write_synthetic


def test_pack_unpack_round_trip_keeps_everything_but_the_last_bits(tmp_path: Path) -> None:
    src = write_synthetic(tmp_path / "syn.h5", n_structures=3, per_structure=2, size=64)
    step = 4e-3
    err = pack(src, tmp_path / "q.h5", step)
    assert err <= step / 2 + 1e-7
    assert unpack(tmp_path / "q.h5", tmp_path / "u.h5") == 6
    with h5py.File(src, "r") as a, h5py.File(tmp_path / "u.h5", "r") as b:
        assert sorted(a) == sorted(b) and b.attrs["packed_every"] == 1
        assert dict(a.attrs).keys() | {"packed_every", "packed_offsets"} == dict(b.attrs).keys()
        assert b["images"].dtype == np.float32 and b["images"].shape == a["images"].shape
    with SimulatedDataset(src) as a, SimulatedDataset(tmp_path / "u.h5") as b:
        assert len(a) == len(b) and list(a.structure_ids()) == list(b.structure_ids())
        for i in range(len(a)):
            np.testing.assert_allclose(b.clean(i), a.clean(i), atol=step / 2 + 1e-6, rtol=0)
            assert a.meta(i) == b.meta(i)


def test_every_keeps_each_kept_image_with_its_own_metadata_and_columns(tmp_path: Path) -> None:
    src = write_synthetic(tmp_path / "syn.h5", n_structures=3, per_structure=3, size=64)
    step = 4e-3
    pack(src, tmp_path / "q.h5", step, every=2)
    assert unpack(tmp_path / "q.h5", tmp_path / "u.h5") == 5  # images 0, 2, 4, 6, 8
    with SimulatedDataset(src) as a, SimulatedDataset(tmp_path / "u.h5") as b:
        assert len(b) == 5
        for j, i in enumerate(range(0, 9, 2)):
            np.testing.assert_allclose(b.clean(j), a.clean(i), atol=step / 2 + 1e-6, rtol=0)
            assert b.meta(j) | {"col_start": 0} == a.meta(i) | {"col_start": 0}
            for name, vals in a.columns(i).items():
                np.testing.assert_array_equal(b.columns(j)[name], vals)


def test_parts_appended_make_the_whole_world_once(tmp_path: Path) -> None:
    """A world larger than one transfer goes over in parts; each part joins the unpacked file once."""
    src = write_synthetic(tmp_path / "syn.h5", n_structures=3, per_structure=3, size=64)
    step = 4e-3
    for k in range(3):
        pack(src, tmp_path / f"q{k}.h5", step, every=3, offset=k)
    assert unpack(tmp_path / "q1.h5", tmp_path / "u.h5", append=True) == 3  # no file yet: created
    assert unpack(tmp_path / "q0.h5", tmp_path / "u.h5", append=True) == 3
    assert unpack(tmp_path / "q0.h5", tmp_path / "u.h5", append=True) == 0  # a retried call
    assert unpack(tmp_path / "q2.h5", tmp_path / "u.h5", append=True) == 3
    with SimulatedDataset(src) as a, SimulatedDataset(tmp_path / "u.h5") as b:
        assert len(b) == 9 and sorted(b.structure_ids()) == sorted(a.structure_ids())
        order = [*range(1, 9, 3), *range(0, 9, 3), *range(2, 9, 3)]
        for j, i in enumerate(order):
            np.testing.assert_allclose(b.clean(j), a.clean(i), atol=step / 2 + 1e-6, rtol=0)
            assert b.meta(j) | {"col_start": 0} == a.meta(i) | {"col_start": 0}
            for name, vals in a.columns(i).items():
                np.testing.assert_array_equal(b.columns(j)[name], vals)
    # a file unpacked before parts existed holds part 0 without saying so: part 1 still joins it, once
    pack(src, tmp_path / "h0.h5", step, every=2)
    pack(src, tmp_path / "h1.h5", step, every=2, offset=1)
    unpack(tmp_path / "h0.h5", tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f.attrs["packed_offsets"]
    assert unpack(tmp_path / "h0.h5", tmp_path / "old.h5", append=True) == 0
    assert unpack(tmp_path / "h1.h5", tmp_path / "old.h5", append=True) == 4
    with SimulatedDataset(tmp_path / "old.h5") as b:
        assert len(b) == 9
    pack(src, tmp_path / "q_other.h5", step, every=2, offset=1)
    with pytest.raises(ValueError, match="parts of one in 3"):
        unpack(tmp_path / "q_other.h5", tmp_path / "u.h5", append=True)
    with pytest.raises(ValueError, match="offset"):
        pack(src, tmp_path / "bad.h5", step, every=3, offset=3)
