"""Files a microscopist brings to ``sbd-stream denoise`` and ``sbd-train evaluate-images`` (audit h30):
an MRC with non-square voxels, an ImageJ TIFF whose unit is the escaped micro sign, a MATLAB-style
channel-last stack, and RELION's ``.mrcs`` stack name.

Before: the MRC's X size alone was taken (0.06 x 0.12 A pixels binned as square, exit 0); ``\\u00B5m``
was no unit, so the stated pixel size was lost and the paper's 0.060 A assumed; a ``(128, 160, 3)``
array was denoised as 128 frames of 160 x 3 without a word; ``evaluate-images`` passed ``.mrcs`` over
without listing it anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from sbd_stream.sources import stack_cache
from sbd_stream.sources.stacks import StackError, open_stack
from training.evaluate.clean_images import Unusable, read_file, read_images


def _mrc(path: Path, data: np.ndarray, voxel: float | tuple[float, float, float]) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel
    return path


def test_mrc_non_square_voxels_are_refused_in_one_line(tmp_path: Path) -> None:
    path = _mrc(tmp_path / "ns.mrc", np.zeros((2, 40, 48), np.int16), (0.06, 0.12, 1.0))
    with pytest.raises(StackError) as e:
        open_stack(path)
    msg = str(e.value)
    assert "non-square pixels" in msg and "0.06 A wide" in msg and "0.12 A high" in msg
    assert msg.count(str(path)) == 1 and "\n" not in msg
    square = _mrc(tmp_path / "sq.mrc", np.zeros((2, 40, 48), np.int16), 0.12)  # still read, size kept
    stack = open_stack(square)
    try:
        assert stack.sampling["pixel_size_A"] == pytest.approx(0.12, rel=1e-6)
        assert stack.shape == (2, 40, 48)
    finally:
        stack.close()


@pytest.mark.parametrize("unit", ["\\u00B5m", "\u03bcm"])
def test_imagej_micro_units_state_the_pixel_size(tmp_path: Path, unit: str) -> None:
    """ImageJ writes non-ASCII units escaped (``\\u00C5`` was read, ``\\u00B5m`` was not)."""
    per_unit = 1.2e-5  # 0.12 A in um
    path = tmp_path / "ij.tif"
    data = np.zeros((2, 40, 48), np.uint16)
    meta = {"unit": unit, "axes": "ZYX"}
    if unit == "\u03bcm":  # not ASCII: tifffile cannot write it in ImageJ's description; JSON one instead
        tifffile.imwrite(path, data, metadata={"unit": unit, "pixel_size": per_unit})
    else:
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / per_unit, 1 / per_unit), metadata=meta)
    stack = open_stack(path)
    try:
        assert stack.sampling.get("pixel_size_A") == pytest.approx(0.12, rel=1e-6)
    finally:
        stack.close()


def test_channel_last_stack_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    np.save(tmp_path / "hwn.npy", np.zeros((64, 48, 3), np.uint16))
    np.save(tmp_path / "nhw.npy", np.zeros((3, 64, 48), np.uint16))
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sources.stacks"):
        open_stack(tmp_path / "nhw.npy").close()
        assert not caplog.records
        stack = open_stack(tmp_path / "hwn.npy")
    try:
        assert stack.shape == (64, 48, 3)  # frames first, as documented: only the warning is new
    finally:
        stack.close()
    (rec,) = caplog.records
    assert "64 frames of 48 x 3" in rec.getMessage() and "np.moveaxis(a, -1, 0)" in rec.getMessage()
    caplog.clear()  # a Dask worker reopening it (stack_cache) does not warn again: the client has
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sources.stacks"):
        rows = stack_cache.read_rows(tmp_path / "hwn.npy", None, 0, 2)
        stack_cache.close_all()
    assert rows.shape == (2, 48, 3) and not caplog.records


def test_evaluate_images_refuses_non_square_mrc_and_reads_mrcs(tmp_path: Path) -> None:
    img = np.ones((40, 48), np.float32)
    ns = _mrc(tmp_path / "ns.mrc", img, (0.06, 0.12, 1.0))
    with pytest.raises(Unusable, match="non-square pixels"):
        read_file(ns)
    _mrc(tmp_path / "stack.mrcs", np.stack([img, 2 * img]), 0.06)
    skipped: list[dict[str, str]] = []
    names = [name for name, _ in read_images(tmp_path, skipped=skipped)]
    assert names == ["stack.mrcs", "stack.mrcs[1]"]
    assert [s["path"] for s in skipped] == [str(ns)]


@pytest.mark.parametrize("nx", [48, 47])
def test_mrc_mode_101_four_bit_counts_are_unpacked(tmp_path: Path, nx: int) -> None:
    """SerialEM's 4-bit counting frames (IMOD mode 101, low nibble first, odd lines padded to a byte)
    were refused as "Unrecognised mode '101'"."""
    counts = np.random.default_rng(5).integers(0, 16, size=(3, 20, nx), dtype=np.uint8)
    padded = np.zeros((3, 20, nx + nx % 2), np.uint8)
    padded[..., :nx] = counts
    packed = padded[..., 0::2] | (padded[..., 1::2] << 4)
    path = _mrc(tmp_path / "k2.mrc", packed.view(np.int8), 0.06)  # mode 0: the packed bytes as they are
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(raw[:1024]), dtype=mrcfile.dtypes.HEADER_DTYPE).copy()
    header["mode"], header["nx"], header["mx"] = 101, nx, nx
    header["cella"]["x"] = nx * 0.06
    raw[:1024] = header.tobytes()
    path.write_bytes(bytes(raw))
    stack = open_stack(path)
    try:
        assert stack.shape == (3, 20, nx) and stack.dtype == np.uint8
        assert stack.sampling["pixel_size_A"] == pytest.approx(0.06, rel=1e-6)
        np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), counts)
        np.testing.assert_array_equal(stack.frames[1], counts[1])
    finally:
        stack.close()


def test_evaluate_images_names_each_hdf5_dataset(tmp_path: Path) -> None:
    """Two simulations in one HDF5 file were rows ``sim.h5`` and ``sim.h5[1]``: which dataset was
    which went unsaid, and a dataset added before one renamed it (its noise is seeded by the name)."""
    import h5py

    a, b = np.full((2, 40, 48), 0.9, np.float32), np.full((40, 48), 1.1, np.float32)
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        f["defocus_0"] = a
        f["series/defocus_5"] = b
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["img"] = b  # a single dataset keeps the file's name alone, as before
    got = read_images(tmp_path)
    names = ["one.h5", "sim.h5:defocus_0", "sim.h5:defocus_0[1]", "sim.h5:series/defocus_5"]
    assert [n for n, _ in got] == names
    np.testing.assert_array_equal(got[3][1], b)


def test_evaluate_images_checks_the_pixel_size_of_a_file_of_several_datasets(tmp_path: Path) -> None:
    """``open_stack`` refuses such a file as ambiguous, so its stated 0.1 A escaped the comparison with
    ``--pixel-size`` (a file of one dataset was compared)."""
    import h5py

    from training.evaluate.clean_images import stated_pixel_sizes

    img = np.ones((40, 48), np.float32)
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        f.attrs["pixel_size_A"] = 0.1
        f["a"], f["b"] = img, img
    assert stated_pixel_sizes(tmp_path) == {str(tmp_path / "sim.h5"): pytest.approx(0.1)}
