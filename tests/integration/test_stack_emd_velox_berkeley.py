"""EMD files read by ``open_stack`` (``stack_emd.py``) and walked by ``evaluate-images``: Velox's frames
kept last, (H, W, n), come out (n, H, W) with the pixel size of its JSON metadata; a Berkeley EMD file
written by HyperSpy comes out as HyperSpy reads it, with the spacing of its dim vectors.

Velox files are written here with h5py in Velox's layout (no open tool writes Velox) and cross-checked
against rosettasciio's Velox reader; the Berkeley file is written by HyperSpy itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from ci_require import require_module

from sbd_stream.sources.stacks import StackError, open_stack
from training.evaluate.clean_images import read_images, stated_pixel_sizes

pytestmark = pytest.mark.integration

FRAMES = (np.arange(3 * 32 * 40) % 251).reshape(3, 32, 40).astype(np.uint16)


def write_velox(path: Path, frames: np.ndarray, size: tuple[str, str] = ("1.2e-11", "1.2e-11"),
                unit: str = "m", uuids: tuple[str, ...] = ("6b1a1d2e0c9f4b7f8e2d3c4b5a697887",),
                metadata: bool = True) -> Path:  # fmt: skip
    """``frames`` (n, H, W) as Velox keeps an image signal: (H, W, n), JSON metadata a column a frame."""
    meta = {
        "BinaryResult": {"PixelSize": {"width": size[0], "height": size[1]}, "PixelUnitX": unit,
                         "PixelUnitY": unit, "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
        "Scan": {"FrameTime": "0.1"}, "Detectors": {"Detector-0": {"DetectorName": "Ceta"}},
        "Acquisition": {}, "CustomProperties": {}, "Optics": {}, "Instrument": {},
    }  # fmt: skip
    raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        )
        for uuid in uuids:
            g = f.create_group(f"Data/Image/{uuid}")
            g.create_dataset("Data", data=np.moveaxis(frames, 0, -1), chunks=(*frames.shape[1:], 1))
            if metadata:
                column = np.zeros((raw.size + 16, frames.shape[0]), np.uint8)
                column[: raw.size] = raw[:, None]
                g.create_dataset("Metadata", data=column)
    return path


def test_velox_frames_last_read_in_order_with_its_pixel_size(tmp_path: Path) -> None:
    rsciio_emd = require_module("rsciio.emd", "rosettasciio is in the dev extra")
    path = write_velox(tmp_path / "ceta.emd", FRAMES)
    (theirs,) = rsciio_emd.file_reader(str(path))  # the layout as rosettasciio reads Velox
    np.testing.assert_array_equal(theirs["data"], FRAMES)
    assert [(a["scale"], a["units"]) for a in theirs["axes"][1:]] == [(pytest.approx(12.0), "pm")] * 2
    stack = open_stack(path)
    try:
        assert stack.shape == (3, 32, 40)
        np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), FRAMES)
        assert stack.sampling == {"pixel_size_A": pytest.approx(0.12)}
    finally:
        stack.close()


def test_velox_without_metadata_several_images_and_nonsquare(tmp_path: Path) -> None:
    stack = open_stack(write_velox(tmp_path / "bare.emd", FRAMES, metadata=False))
    assert stack.shape == (3, 32, 40) and stack.sampling == {}  # none stated: the documented default
    stack.close()
    stack = open_stack(write_velox(tmp_path / "px.emd", FRAMES, unit="px"))
    assert stack.sampling == {}  # a unit that is no length: never its number taken as angstrom
    stack.close()
    two = write_velox(tmp_path / "two.emd", FRAMES, uuids=("aa", "bb"))
    with pytest.raises(StackError, match=r"2 images .*--dataset"):
        open_stack(two)
    picked = open_stack(two, "Data/Image/bb/Data")
    assert picked.shape == (3, 32, 40)
    picked.close()
    with pytest.raises(StackError, match="non-square pixels"):
        open_stack(write_velox(tmp_path / "ns.emd", FRAMES, size=("1e-10", "2e-10")))


def test_berkeley_emd_written_by_hyperspy(tmp_path: Path) -> None:
    hs = require_module("hyperspy.api", "HyperSpy is in the dev extra")
    frames = FRAMES.astype(np.float32)
    signal = hs.signals.Signal2D(frames)
    for ax in signal.axes_manager.signal_axes:
        ax.scale, ax.units = 0.05, "nm"
    signal.save(tmp_path / "series.emd")
    stack = open_stack(tmp_path / "series.emd")
    try:
        assert stack.shape == (3, 32, 40)
        np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), frames)
        assert stack.sampling == {"pixel_size_A": pytest.approx(0.5)}
    finally:
        stack.close()
    hs.signals.Signal2D(frames[0]).save(tmp_path / "one.emd")
    one = open_stack(tmp_path / "one.emd")
    assert one.shape == (1, 32, 40)
    np.testing.assert_array_equal(one.frames[0:1][0], frames[0])
    one.close()


def test_evaluate_images_reads_emd_files(tmp_path: Path) -> None:
    write_velox(tmp_path / "sim.emd", FRAMES.astype(np.float32), size=("5e-12", "5e-12"))
    images = read_images(tmp_path)
    assert [n for n, _ in images] == ["sim.emd", "sim.emd[1]", "sim.emd[2]"]
    np.testing.assert_array_equal(images[1][1], FRAMES[1])
    assert stated_pixel_sizes(tmp_path) == {str(tmp_path / "sim.emd"): pytest.approx(0.05)}


def write_spec_emd(path: Path, data: np.ndarray, image_axes: tuple[int, int]) -> Path:
    """A Berkeley EMD file as the specification and ncempy write it: ``data`` in C order, each ``dimK``
    as long as its axis, the image's axes in nm (0.05 nm), the other (frames) without a length unit."""
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 2
        g = f.create_group("data/img")
        g.attrs["emd_group_type"] = 1
        g.create_dataset("data", data=data)
        for k, n in enumerate(data.shape):
            length = k in image_axes
            d = g.create_dataset(f"dim{k + 1}", data=np.arange(n) * (0.05 if length else 1.0))
            d.attrs["name"], d.attrs["units"] = ("x" if length else "frame"), ("[n_m]" if length else "")
    return path


def test_berkeley_emd_in_c_order_as_the_specification_writes_it(tmp_path: Path) -> None:
    """Full-length axis vectors (ncempy, the EMD specification): the array is read in C order. A 2-D
    (H, W) image came out transposed, (1, W, H), as if HyperSpy had written it (audit h32)."""
    cases = {
        "image": (FRAMES[0], (0, 1), FRAMES[:1]),
        "frames_first": (FRAMES, (1, 2), FRAMES),
        "frames_last": (np.moveaxis(FRAMES, 0, -1), (0, 1), FRAMES),
    }
    for name, (data, axes, want) in cases.items():
        stack = open_stack(write_spec_emd(tmp_path / f"{name}.emd", data, axes))
        try:
            assert stack.shape == want.shape, name
            np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), want)
            assert stack.sampling == {"pixel_size_A": pytest.approx(0.5)}, name
        finally:
            stack.close()
