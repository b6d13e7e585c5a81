"""abTEM's own save format (``measurement.to_zarr``, a zarr v3 folder) and plain zarr arrays read by
``open_stack`` (``stack_zarr.py``) and walked by ``evaluate-images``: frames in order, abTEM's sampling as
the pixel size, and a folder or chunk that is no usable store as one ``StackError`` line.

The stores are written by abTEM itself, from a two-atom potential at coarse sampling (a second or so).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from ci_require import require_module

from sbd_stream.sources.stacks import StackError, open_stack
from training.evaluate.clean_images import read_images, stated_pixel_sizes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def abtem_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    abtem = require_module("abtem", "abTEM is in the train extra")
    from ase import Atoms

    abtem.config.set({"device": "cpu", "progress_bar": False})
    root = tmp_path_factory.mktemp("abtem_zarr")
    atoms = Atoms("Au2", positions=[(2.0, 2.0, 1.0), (4.0, 4.5, 1.0)], cell=(6.4, 6.4, 2.0))
    exit_wave = abtem.PlaneWave(energy=200e3).multislice(abtem.Potential(atoms, sampling=0.2))
    series = exit_wave.apply_ctf(abtem.CTF(defocus=np.array([0.0, 50.0, 100.0]))).intensity().compute()
    image = exit_wave.intensity().compute()
    pattern = exit_wave.diffraction_patterns().compute()
    series.to_zarr(str(root / "series.zarr"))
    image.to_zarr(str(root / "image.zarr"))
    pattern.to_zarr(str(root / "pattern.zarr"))
    return {"root": root, "series": series, "image": image}


def test_abtem_series_frames_in_order_and_its_sampling(abtem_stores: dict) -> None:
    root, series = abtem_stores["root"], abtem_stores["series"]
    stack = open_stack(root / "series.zarr")
    try:
        assert stack.shape == (3, 32, 32)
        np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), series.array)
        assert stack.sampling == {"pixel_size_A": pytest.approx(series.sampling[0])}
    finally:
        stack.close()
    one = open_stack(root / "image.zarr")
    assert one.shape == (1, 32, 32) and one.sampling["pixel_size_A"] == pytest.approx(0.2)
    np.testing.assert_array_equal(one.frames[0:1][0], abtem_stores["image"].array)


def test_abtem_diffraction_pattern_states_no_pixel_size(abtem_stores: dict) -> None:
    """Reciprocal-space axes (1/A): no pixel size, never their sampling taken as angstrom."""
    stack = open_stack(abtem_stores["root"] / "pattern.zarr")
    assert stack.sampling == {}


def test_plain_zarr_array_and_its_sampling_attribute(tmp_path: Path) -> None:
    frames = np.arange(4 * 40 * 36, dtype=np.uint16).reshape(4, 40, 36)
    arr = zarr.create_array(
        str(tmp_path / "plain.zarr"), shape=frames.shape, chunks=(1, 40, 36), dtype="uint16"
    )
    arr[:] = frames
    arr.attrs["pixel_size_A"] = 0.06
    stack = open_stack(tmp_path / "plain.zarr")
    assert stack.shape == (4, 40, 36) and stack.sampling == {"pixel_size_A": pytest.approx(0.06)}
    np.testing.assert_array_equal(np.concatenate(list(stack.batches(3))), frames)
    arr.attrs["pixel_size_A"] = -1.0
    with pytest.raises(StackError, match="pixel_size_A"):
        open_stack(tmp_path / "plain.zarr")


def test_zarr_that_is_no_usable_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "file.zarr").write_bytes(b"PK\x03\x04")
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", shape=(2, 32, 32), dtype="f4")
    group.create_array("b", shape=(2, 32, 32), dtype="f4")
    arr = zarr.create_array(str(tmp_path / "cut.zarr"), shape=(2, 32, 32), chunks=(1, 32, 32), dtype="f4")
    arr[:] = 1.0
    chunk = next(
        p
        for p in (tmp_path / "cut.zarr").rglob("*")
        if p.is_file() and p.name == "0" and p.parent.name == "0"
    )
    chunk.write_bytes(chunk.read_bytes()[:7])  # a chunk cut short: its codec fails
    for name, why in (("empty.zarr", "not a readable zarr store"), ("file.zarr", "is a folder"),
                      ("two.zarr", "name one with --dataset")):  # fmt: skip
        with pytest.raises(StackError, match=why) as e:
            open_stack(tmp_path / name)
        assert "\n" not in str(e.value)
    # metadata only: a chunk of 10^6 frames of 4096^2 would decode to 67 TB for any batch of it
    zarr.create_array(
        str(tmp_path / "huge.zarr"), shape=(10**6, 4096, 4096), chunks=(10**6, 4096, 4096), dtype="f4"
    )
    with pytest.raises(StackError, match="rechunk it"):
        open_stack(tmp_path / "huge.zarr")
    assert open_stack(tmp_path / "two.zarr", "b").shape == (2, 32, 32)
    stack = open_stack(tmp_path / "cut.zarr")
    with pytest.raises(StackError, match="cannot read") as e:
        list(stack.batches(2))
    assert "\n" not in str(e.value)


def test_evaluate_images_reads_a_zarr_folder_and_its_pixel_size(abtem_stores: dict, tmp_path: Path) -> None:
    shutil.copytree(abtem_stores["root"] / "series.zarr", tmp_path / "series.zarr")
    (tmp_path / "notes").mkdir()  # a plain folder beside it: not an image, not a skip
    images = read_images(tmp_path)
    assert [n for n, _ in images] == ["series.zarr", "series.zarr[1]", "series.zarr[2]"]
    np.testing.assert_allclose(images[2][1], abtem_stores["series"].array[2])
    assert stated_pixel_sizes(tmp_path) == {str(tmp_path / "series.zarr"): pytest.approx(0.2)}


def test_abtem_array_folder_given_alone_keeps_the_groups_sampling(abtem_stores: dict, tmp_path: Path) -> None:
    """``x.zarr/array0`` handed over itself (a folder browsed into): abTEM keeps its axes in the group's
    ``metadata0``, so its pixel size comes from there, not the 0.060 A default; a plain group's array
    folder still states only its own attributes."""
    root, series = abtem_stores["root"], abtem_stores["series"]
    stack = open_stack(root / "series.zarr" / "array0")
    try:
        assert stack.shape == (3, 32, 32)
        assert stack.sampling == {"pixel_size_A": pytest.approx(series.sampling[0])}
    finally:
        stack.close()
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("array0", shape=(2, 16, 16), dtype="u2")[:] = 1
    group["array0"].attrs["pixel_size_A"] = 0.1
    plain = open_stack(tmp_path / "plain.zarr" / "array0")
    assert plain.sampling == {"pixel_size_A": pytest.approx(0.1)}
    plain.close()
