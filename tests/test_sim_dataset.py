"""The simulated-dataset file format: append, read back, resume, truncate uncommitted rows."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from training.dataset import ImageRecord, SimulatedDataset, SimulatedDatasetWriter, TaskResult


def _task(key: str, sid: str, n: int, shape=(8, 6), k_cols: int = 3) -> TaskResult:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    images = []
    for j in range(n):
        meta = dict(
            structure_id=sid,
            task_key=key,
            particle_class="PtNp3",
            defect_class="D0",
            contrast_class=1,
            thickness_nm=3.0,
            tilt_x_deg=0.0,
            tilt_y_deg=1.0,
            defocus_nm=float(j),
            pixel_size_A=0.15,
            dose=0.45,
        )
        cols = dict(
            xy=rng.uniform(0, 5, (k_cols + j, 2)),
            is_surface=np.arange(k_cols + j) % 2 == 0,
            contrast=np.full(k_cols + j, j % 3),
            species=np.full(k_cols + j, 78),
            n_atoms=np.full(k_cols + j, 5),
        )
        images.append(
            ImageRecord(clean=rng.uniform(0.5, 1.5, shape).astype(np.float32), meta=meta, columns=cols)
        )
    return TaskResult(key=key, structure={"structure_id": sid, "seed": 1}, images=images)


@pytest.mark.integration
def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    t1, t2 = _task("a", "s0", 3), _task("b", "s1", 2)
    with SimulatedDatasetWriter(path, (8, 6), {"preset": "test"}) as w:
        w.append_task(t1)
        w.append_task(t2)
    with SimulatedDataset(path) as ds:
        assert len(ds) == 5
        np.testing.assert_array_equal(ds.clean(3), t2.images[0].clean)
        c = ds.columns(4)
        np.testing.assert_allclose(c["xy"], t2.images[1].columns["xy"].astype(np.float32))
        assert c["contrast"].dtype == np.int8 and c["is_surface"].dtype == bool
        m = ds.meta(1)
        assert m["structure_id"] == "s0" and m["defocus_nm"] == 1.0 and m["particle_class"] == "PtNp3"
        assert list(ds.structure_ids()) == ["s0"] * 3 + ["s1"] * 2
        assert ds.attrs["config"] == {"preset": "test"}
        assert set(ds.structures()) == {"s0", "s1"}


@pytest.mark.integration
def test_resume_skips_done_and_drops_uncommitted_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with SimulatedDatasetWriter(path, (8, 6), {"preset": "test"}) as w:
        w.append_task(_task("a", "s0", 2))
    # Simulate a run killed mid-write: rows beyond the committed counters.
    with h5py.File(path, "a") as f:
        f["images"].resize(5, axis=0)
        f["columns/xy"].resize(100, axis=0)
    with SimulatedDatasetWriter(path, (8, 6), {"preset": "test"}) as w:
        assert w.done_keys() == {"a"}
        assert len(w) == 2
        w.append_task(_task("b", "s1", 1))
    with SimulatedDataset(path) as ds:
        assert len(ds) == 3
        assert ds.meta(2)["task_key"] == "b"
        assert len(ds.columns(2)["xy"]) == 3


@pytest.mark.integration
def test_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    SimulatedDatasetWriter(path, (8, 6), {"preset": "test"}).close()
    with pytest.raises(ValueError, match="other settings"):
        SimulatedDatasetWriter(path, (8, 6), {"preset": "other"})
    with pytest.raises(ValueError, match="cannot append"):
        SimulatedDatasetWriter(path, (4, 4), {"preset": "test"})
