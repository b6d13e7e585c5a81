"""A boolean where a pixel size or dose is stated is refused in one line naming it, never read as 1.0.

Session 35: ``float(True)`` is 1.0, so ``pixel_size_A = True`` in an HDF5 stack's attributes (h5py reads
``numpy.bool_``), ``true`` in a zarr array's attributes or in abTEM's axes (zarr, TIFF), or a TIFF's
``pixel_size`` calibration, was denoised at a 1 A pixel, exit 0; ``DetectorSettings`` took NumPy's
``True`` (Python's was already refused: ``config_merge.no_bool``). Ints stay numbers. Real files here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pydantic
import pytest
import tifffile
import zarr

from sbd_stream.config import DetectorSettings, LikelihoodSettings, load_settings
from sbd_stream.sources.stacks import StackError, open_stack

FRAMES = np.random.default_rng(0).poisson(1.0, (3, 32, 32)).astype(np.uint16)


def _sampling(path: Path) -> dict[str, float]:
    s = open_stack(path)
    try:
        return dict(s.sampling)
    finally:
        s.close()


def _one_line_naming(e: pytest.ExceptionInfo[Any], field: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and field in msg and "boolean" in msg, msg


def _h5(path: Path, **attrs: Any) -> Path:
    with h5py.File(path, "w") as f:
        f["frames"] = FRAMES
        f.attrs.update(attrs)
    return path


@pytest.mark.parametrize("field", ["pixel_size_A", "dose_e_per_A2", "counts_per_px"])
@pytest.mark.parametrize("value", [True, np.True_, np.array([True])])
def test_hdf5_boolean_sampling_attribute_is_refused(field: str, value: Any, tmp_path: Path) -> None:
    path = _h5(tmp_path / "b.h5", **{field: value})
    with h5py.File(path) as f:  # h5py keeps it a boolean (an enum), read back as numpy.bool_
        assert np.asarray(f.attrs[field]).dtype == np.bool_
    with pytest.raises(StackError) as e:
        _sampling(path)
    _one_line_naming(e, field)


def test_hdf5_integer_sampling_attributes_are_still_numbers(tmp_path: Path) -> None:
    path = _h5(tmp_path / "i.h5", pixel_size_A=1, counts_per_px=np.int64(2))
    assert _sampling(path) == {"pixel_size_A": 1.0, "counts_per_px": 2.0}


def _zarr(path: Path, attrs: dict[str, Any]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(store=str(path), shape=FRAMES.shape, chunks=(1, 32, 32), dtype="<u2")
        arr[:] = FRAMES
        arr.attrs.update(attrs)
    return path


def test_zarr_boolean_pixel_size_attribute_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError) as e:
        _sampling(_zarr(tmp_path / "b.zarr", {"pixel_size_A": True}))
    _one_line_naming(e, "pixel_size_A")
    assert _sampling(_zarr(tmp_path / "i.zarr", {"pixel_size_A": 1})) == {"pixel_size_A": 1.0}


def _abtem_axes(sampling: Any) -> dict[str, Any]:
    ax = {"type": "RealSpaceAxis", "sampling": sampling, "units": "Å"}
    return {"axis_0": {"type": "LinearAxis"}, "axis_1": ax, "axis_2": dict(ax)}


def test_zarr_abtem_axes_boolean_sampling_is_refused(tmp_path: Path) -> None:
    g = tmp_path / "abtem.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(g), mode="w")
        arr = group.create_array("array0", shape=FRAMES.shape, chunks=(1, 32, 32), dtype="<u2")
        arr[:] = FRAMES
        group.attrs["metadata0"] = {"axes": _abtem_axes(True)}
    with pytest.raises(StackError) as e:
        _sampling(g)
    _one_line_naming(e, "sampling")


@pytest.mark.parametrize("kind", ["abtem", "calibration"])
def test_tiff_boolean_pixel_size_is_refused(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.tif"
    if kind == "abtem":  # abTEM's Images.to_tiff: its metadata as the description's JSON
        desc = json.dumps({"axes": _abtem_axes(True)})
        tifffile.imwrite(path, FRAMES, description=desc, metadata=None, photometric="minisblack")
    else:  # tifffile's own JSON metadata: unit and pixel_size
        tifffile.imwrite(path, FRAMES, metadata={"unit": "nm", "pixel_size": True}, photometric="minisblack")
    with pytest.raises(StackError) as e:
        _sampling(path)
    _one_line_naming(e, "sampling" if kind == "abtem" else "pixel_size")


def test_tiff_integer_pixel_size_is_still_a_number(tmp_path: Path) -> None:
    path = tmp_path / "i.tif"
    tifffile.imwrite(path, FRAMES, metadata={"unit": "nm", "pixel_size": 1}, photometric="minisblack")
    assert _sampling(path) == {"pixel_size_A": 10.0}


@pytest.mark.parametrize(
    ("model", "field"),
    [(DetectorSettings, "pixel_size_A"), (DetectorSettings, "dose_e_per_A2"),
     (DetectorSettings, "counts_per_px"), (LikelihoodSettings, "threshold")],
)  # fmt: skip
def test_settings_refuse_numpys_boolean_and_keep_ints(model: Any, field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as e:
        model(**{field: np.True_})
    assert field in str(e.value)
    assert getattr(model(**{field: 1}), field) == 1.0


def test_settings_file_refuses_a_boolean_pixel_size_and_keeps_ints(tmp_path: Path) -> None:
    """TOML (the settings file): refused before this session too, kept so (``config_merge.no_bool``)."""
    bad, good = tmp_path / "b.toml", tmp_path / "g.toml"
    bad.write_text("[detector]\npixel_size_A = true\n")
    good.write_text("[detector]\npixel_size_A = 1\n")
    with pytest.raises(pydantic.ValidationError, match="pixel_size_A"):
        load_settings(bad)
    assert load_settings(good).detector.pixel_size_A == 1.0


def _velox(path: Path, width: Any) -> Path:
    """A Velox EMD (as ``test_stack_emd_velox_berkeley`` writes one): frames last, JSON metadata a column."""
    meta = {"BinaryResult": {"PixelSize": {"width": width, "height": "1.2e-11"}, "PixelUnitX": "m",
                             "PixelUnitY": "m"}}  # fmt: skip
    raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with h5py.File(path, "w") as f:
        version = json.dumps({"format": "Velox", "version": "11"}).encode()
        f.create_dataset("Version", data=np.array([version]))
        g = f.create_group("Data/Image/6b1a1d2e0c9f4b7f8e2d3c4b5a697887")
        g.create_dataset("Data", data=np.moveaxis(FRAMES, 0, -1), chunks=(*FRAMES.shape[1:], 1))
        column = np.zeros((raw.size + 16, FRAMES.shape[0]), np.uint8)
        column[: raw.size] = raw[:, None]
        g.create_dataset("Metadata", data=column)
    return path


def test_velox_boolean_pixel_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError) as e:
        _sampling(_velox(tmp_path / "b.emd", True))
    _one_line_naming(e, "PixelSize width")
    assert _sampling(_velox(tmp_path / "s.emd", "1.2e-11")) == {"pixel_size_A": pytest.approx(0.12)}
