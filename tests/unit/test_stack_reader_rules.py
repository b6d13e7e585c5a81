"""The input readers' sampling and layout rules, each pinned on a real file (mutation round 5, audit 27).

A wrong rule here is silent: a factor-2 pixel size or dose, or frames read scrambled or shifted,
and ``denoise`` exits 0. Each case is a file as a common writer makes it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest

from sbd_stream.sources.stacks import open_stack


def _read(path: Path) -> tuple[dict, np.ndarray]:
    stack = open_stack(path)
    try:
        return dict(stack.sampling), np.asarray(stack.frames[0 : stack.shape[0]])
    finally:
        stack.close()


def test_the_datasets_own_pixel_size_wins_over_the_files(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["frames"] = np.zeros((2, 32, 32), np.uint16)
        f.attrs["pixel_size_A"] = 0.06
        f["frames"].attrs["pixel_size_A"] = 0.12
    assert _read(tmp_path / "a.h5")[0] == {"pixel_size_A": 0.12}


def test_of_two_dose_forms_the_dose_per_area_is_kept(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["frames"] = np.zeros((2, 32, 32), np.uint16)
        f.attrs.update(pixel_size_A=0.06, dose_e_per_A2=125.0, counts_per_px=0.9)
    assert _read(tmp_path / "b.h5")[0] == {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0}


@pytest.mark.parametrize("ext_bytes", [0, 1024])
def test_an_mrc_stack_reads_its_frames_and_its_x_pixel_size(tmp_path: Path, ext_bytes: int) -> None:
    """voxel z = 1 (a frame index, as SerialEM/IMOD leave it) is no pixel size; an extended header
    (SerialEM/FEI per-frame metadata) lies between the header and the frames."""
    a = np.random.default_rng(0).poisson(0.45, (3, 64, 48)).astype(np.int16)
    a[:, :, :8] += 5
    with mrcfile.new(tmp_path / "s.mrc") as m:
        if ext_bytes:
            m.set_extended_header(np.arange(ext_bytes, dtype=np.uint8))
        m.set_data(a)
        m.voxel_size = (0.06, 0.06, 1.0)
    sampling, frames = _read(tmp_path / "s.mrc")
    assert sampling == {"pixel_size_A": pytest.approx(0.06)}
    assert np.array_equal(frames, a)


def test_a_fortran_order_npy_is_read_as_saved(tmp_path: Path) -> None:
    a = np.random.default_rng(0).poisson(0.45, (3, 64, 48)).astype(np.uint16)
    a[:, :, :8] += 5
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    assert np.array_equal(_read(tmp_path / "f.npy")[1], a)
