"""The pixel size and orientation a TIFF or MRC states, each on a file as a user's tool writes it (audit h31).

A wrong reading here is silent: the frames are binned to the engine's pixel by a wrong factor, or
denoised transposed or as a thumbnail, and ``denoise`` exits 0.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from PIL import Image

from sbd_stream.sources.stack_tiff import read_whole
from sbd_stream.sources.stacks import StackError, open_stack

FRAMES = np.random.default_rng(0).poisson(1.0, (3, 64, 80)).astype(np.uint16)


def _read(path: Path) -> tuple[dict, np.ndarray]:
    stack = open_stack(path)
    try:
        return dict(stack.sampling), np.asarray(stack.frames[0 : stack.shape[0]])
    finally:
        stack.close()


def test_a_plain_tiff_in_pixels_per_centimetre_states_its_pixel(tmp_path: Path) -> None:
    """As DigitalMicrograph / Velox exports write it: 0.5 A = 2e8 pixels per cm."""
    tifffile.imwrite(
        tmp_path / "cm.tif",
        FRAMES,
        photometric="minisblack",
        resolution=(2e8, 2e8),
        resolutionunit="CENTIMETER",
    )
    sampling, frames = _read(tmp_path / "cm.tif")
    assert sampling == {"pixel_size_A": pytest.approx(0.5)}
    assert np.array_equal(frames, FRAMES)


def test_unequal_centimetre_resolutions_are_refused_as_non_square(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "ns.tif",
        FRAMES,
        photometric="minisblack",
        resolution=(2e8, 1e8),
        resolutionunit="CENTIMETER",
    )
    with pytest.raises(StackError, match="non-square pixels"):
        open_stack(tmp_path / "ns.tif")


def test_a_print_resolution_is_no_pixel_size_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PIL saves 72 dpi (3.5e6 A a pixel): not taken, one warning; fax-like unequal dpi is no refusal."""
    Image.fromarray(FRAMES[0]).save(tmp_path / "dpi.tif", dpi=(72, 72))
    tifffile.imwrite(
        tmp_path / "fax.tif", FRAMES, photometric="minisblack", resolution=(204, 196), resolutionunit="INCH"
    )
    with caplog.at_level(logging.WARNING):
        assert _read(tmp_path / "dpi.tif")[0] == {}
        assert _read(tmp_path / "fax.tif")[0] == {}
    notes = [r.getMessage() for r in caplog.records if "no TEM pixel" in r.getMessage()]
    assert len(notes) == 2 and "72 pixels per inch" in notes[0]


@pytest.mark.parametrize(
    ("size", "unit"),
    [(0.05, "nm"), (0.00005, None), (0.5, "\u00c5"), (50.0, "pm")],
    ids=["nm", "um", "A", "pm"],
)
def test_an_ome_tiff_states_its_physical_size(tmp_path: Path, size: float, unit: str | None) -> None:
    """OME's default unit is the micrometre; tifffile ``ome=True`` as Fiji / Bio-Formats write it."""
    meta: dict = {"axes": "TYX", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:
        meta.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    tifffile.imwrite(tmp_path / "o.ome.tif", FRAMES, ome=True, metadata=meta)
    sampling, frames = _read(tmp_path / "o.ome.tif")
    assert sampling == {"pixel_size_A": pytest.approx(0.5)}
    assert np.array_equal(frames, FRAMES)


def test_an_ome_tiff_with_non_square_pixels_is_refused(tmp_path: Path) -> None:
    meta = {"axes": "TYX", "PhysicalSizeX": 0.05, "PhysicalSizeY": 0.1, "PhysicalSizeXUnit": "nm"}
    meta["PhysicalSizeYUnit"] = "nm"
    tifffile.imwrite(tmp_path / "n.ome.tif", FRAMES, ome=True, metadata=meta)
    with pytest.raises(StackError, match="non-square pixels"):
        open_stack(tmp_path / "n.ome.tif")


def test_a_light_microscope_calibration_is_not_taken(tmp_path: Path) -> None:
    """ImageJ, 1 pixel per micron (1e4 A): taken, ``denoise`` ended on a 4-line validation error."""
    tifffile.imwrite(tmp_path / "lm.tif", FRAMES, imagej=True, resolution=(1, 1), metadata={"unit": "um"})
    assert _read(tmp_path / "lm.tif")[0] == {}


def test_an_mrc_voxel_size_beyond_any_tem_pixel_is_not_taken(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "big.mrc") as m:
        m.set_data(FRAMES.astype(np.int16))
        m.voxel_size = 1e6
    assert _read(tmp_path / "big.mrc")[0] == {}


def test_an_mrc_with_columns_along_y_is_read_as_its_header_orients_it(tmp_path: Path) -> None:
    """mapc, mapr = 2, 1: the stored sections transposed (ChimeraX shows them so); mrcfile does not."""
    stored = FRAMES.astype(np.int16)
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(stored)
        m.voxel_size = 0.5
        m.header.mapc, m.header.mapr = 2, 1
    sampling, frames = _read(tmp_path / "t.mrc")
    assert sampling == {"pixel_size_A": pytest.approx(0.5)}
    assert np.array_equal(frames, np.swapaxes(stored, 1, 2))
    with mrcfile.new(tmp_path / "ns.mrc") as m:  # and non-square pixels stay refused in that order
        m.set_data(stored)
        m.voxel_size = (0.5, 1.0, 1.0)
        m.header.mapc, m.header.mapr = 2, 1
    with pytest.raises(StackError, match="non-square pixels"):
        open_stack(tmp_path / "ns.mrc")


@pytest.mark.parametrize("order", [(3, 2, 1), (1, 3, 2), (5, 1, 2)])
def test_an_mrc_whose_sections_are_not_along_z_is_refused(
    tmp_path: Path, order: tuple[int, int, int]
) -> None:
    """Square in X, Y, but the plane of a (3, 2, 1) section is Z by Y: read as stored it was frames of
    the wrong plane with the X size, exit 0."""
    with mrcfile.new(tmp_path / "v.mrc") as m:
        m.set_data(FRAMES.astype(np.int16))
        m.voxel_size = (0.5, 0.5, 2.0)
        m.header.mapc, m.header.mapr, m.header.maps = order
    with pytest.raises(StackError, match="mapc, mapr, maps"):
        open_stack(tmp_path / "v.mrc")


def test_an_mrc_without_a_sampling_count_states_nothing_quietly(tmp_path: Path) -> None:
    """mx = my = 0 with a cell set: mrcfile's voxel_size divided by zero, NumPy's warning on stderr."""
    with mrcfile.new(tmp_path / "m0.mrc") as m:
        m.set_data(FRAMES.astype(np.int16))
        m.voxel_size = 0.5
        m.header.mx = m.header.my = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _read(tmp_path / "m0.mrc")[0] == {}


def test_a_tiff_with_a_thumbnail_first_reads_the_full_image(tmp_path: Path) -> None:
    """The reduced page is left out of the frames, so the map must be of the full series, not series 0."""
    with tifffile.TiffWriter(tmp_path / "th.tif") as t:
        t.write(FRAMES[0, ::4, ::4], subfiletype=1)
        t.write(FRAMES[0])
    assert np.array_equal(_read(tmp_path / "th.tif")[1], FRAMES[:1])


def test_evaluate_images_refuses_a_colour_screenshot(tmp_path: Path) -> None:
    """Read channel-last, an RGB picture was three 'clean images' of one frame."""
    Image.fromarray(np.stack([FRAMES[0].astype(np.uint8)] * 3, -1)).save(tmp_path / "rgb.tif")
    with pytest.raises(StackError, match="colour TIFF"):
        read_whole(tmp_path / "rgb.tif")


def test_an_imagej_hyperstack_is_refused_naming_its_axes(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "h.tif", FRAMES.reshape(3, 1, 64, 80).repeat(2, 1), imagej=True, metadata={"axes": "TZYX"}
    )
    with pytest.raises(StackError, match="axes TZYX"):
        open_stack(tmp_path / "h.tif")
