"""The simulated-dataset file format: append, read back, resume, truncate uncommitted rows."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import fake_sim_task as _task

from training.sim.dataset import SimulatedDataset, SimulatedDatasetWriter


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


@pytest.mark.integration
def test_planned_structures_come_from_the_stored_world_json(tmp_path: Path) -> None:
    """A file re-plans its world from the JSON it stores (no class path in the file), so module moves
    never strand a data set, and a file still being simulated splits as the finished one will."""
    from training.sim.worlds import WORLDS, file_attrs, plan

    path = tmp_path / "d.h5"
    world = WORLDS["paper"]
    with SimulatedDatasetWriter(path, (8, 6), file_attrs(world)) as w:
        w.append_task(_task("a", "s0", 1))
    with h5py.File(path, "r") as f:
        stored = [str(v) for v in f.attrs.values()]
    assert not any("training." in v or "__class__" in v for v in stored)
    with SimulatedDataset(path) as ds:
        assert ds.planned_structure_ids() == sorted({t.structure.structure_id for t in plan(world)})


def test_canonical_order_and_seeds_survive_a_regeneration_in_another_task_order(tmp_path: Path) -> None:
    """Parallel workers append tasks as they finish: two runs of one world store the same images at other
    indices. Splits, evaluation subsets and noise seeds must name the same images in both files."""
    from training.evaluate.detector import DetectorEvalConfig, load_test

    tasks = [_task(f"s{s:03d}-t{t}", f"s{s:03d}", 3) for s in range(6) for t in range(2)]
    paths = []
    for name, order in (("a", tasks), ("b", tasks[::-1])):
        path = tmp_path / f"{name}.h5"
        with SimulatedDatasetWriter(path, (8, 6), {"preset": "test"}) as w:
            for task in order:
                w.append_task(task)
        paths.append(path)
    with SimulatedDataset(paths[0]) as a, SimulatedDataset(paths[1]) as b:
        assert [a.image_key(int(i)) for i in a.canonical()] == [b.image_key(int(i)) for i in b.canonical()]
        assert a.image_key(0) != b.image_key(0)  # the file orders do differ
        for name, idx in a.split().items():
            other = b.split()[name]
            assert [a.image_key(int(i)) for i in idx] == [b.image_key(int(i)) for i in other]
            np.testing.assert_array_equal(a.clean(int(idx[0])), b.clean(int(other[0])))
        assert len({a.image_seed(i) for i in range(len(a))}) == len(a)
    items = [load_test(DetectorEvalConfig(test=p, max_test_images=5))[0] for p in paths]
    assert [it.index for it in items[0]] != [it.index for it in items[1]]
    for x, y in zip(*items, strict=True):
        np.testing.assert_array_equal(x.clean, y.clean)
        np.testing.assert_array_equal(x.counts, y.counts)  # the same noise draw
        assert x.key == y.key
