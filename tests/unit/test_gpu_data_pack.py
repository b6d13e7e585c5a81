"""The GPU lease's data transfer: a packed training set unpacks to the trainer's format, within the step."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from benchmarks.gpu_data_pack import pack, unpack
from training.sim.dataset import SimulatedDataset
from training.sim.synthetic_data import write_synthetic


def test_pack_unpack_round_trip_keeps_everything_but_the_last_bits(tmp_path: Path) -> None:
    src = write_synthetic(tmp_path / "syn.h5", n_structures=3, per_structure=2, size=64)
    step = 2.5e-4
    err = pack(src, tmp_path / "q.h5", step)
    assert err <= step / 2 + 1e-7
    assert unpack(tmp_path / "q.h5", tmp_path / "u.h5") == 6
    with h5py.File(src, "r") as a, h5py.File(tmp_path / "u.h5", "r") as b:
        assert sorted(a) == sorted(b) and dict(a.attrs).keys() == dict(b.attrs).keys()
        assert b["images"].dtype == np.float32 and b["images"].shape == a["images"].shape
    with SimulatedDataset(src) as a, SimulatedDataset(tmp_path / "u.h5") as b:
        assert len(a) == len(b) and list(a.structure_ids()) == list(b.structure_ids())
        for i in range(len(a)):
            np.testing.assert_allclose(b.clean(i), a.clean(i), atol=step / 2 + 1e-6, rtol=0)
            assert a.meta(i) == b.meta(i)
