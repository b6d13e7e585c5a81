"""The NeXus detector's pixel sizes and the NXdata axes of a recording, both directions, with their units.

docs/service.md, the layout of a part: ``/entry/raw/y ... @units=angstrom: row * pixel_size_A``,
``/entry/raw/x ... @units=angstrom: column * pixel_size_A`` and
``/entry/instrument/detector/x_pixel_size ... @units=angstrom (and y_pixel_size)``. A NeXus reader
scales each axis by the unit it reads. Mutation audit (round 2, NX4): ``y_pixel_size`` in ``nm``
survived every recording test, which only looked at x. Non-square frames, so rows and columns differ.
Real Recorder, files read back with h5py.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

PIXEL_A = 0.5
SHAPE = (32, 48)


@pytest.mark.timeout(60)
def test_both_pixel_sizes_and_both_axes_are_in_angstrom(tmp_path: Path) -> None:
    s = RecordSettings(directory=tmp_path, min_free_bytes=0, record_llr=False)
    rec = Recorder(s, Metrics(), sampling={"pixel_size_A": PIXEL_A})
    for q in range(2):
        rec.write(RecordItem("raw", "a", q, 100.0 + q, np.ones(SHAPE, np.uint16)))
    rec.close_all()
    with h5py.File(tmp_path / "a.nxs", "r") as f:
        det = f["entry/instrument/detector"]
        for name in ("x_pixel_size", "y_pixel_size"):
            assert det[name][()] == PIXEL_A, name
            assert det[name].attrs["units"] == "angstrom", (name, det[name].attrs["units"])
        raw = f["entry/raw"]
        for axis, n in (("y", SHAPE[0]), ("x", SHAPE[1])):
            np.testing.assert_allclose(raw[axis][:], np.arange(n) * PIXEL_A)
            assert raw[axis].attrs["units"] == "angstrom", axis
