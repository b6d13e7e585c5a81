"""A recording at a detector pixel no integer bin serves (0.1 A for a 0.24 A engine: resampled by 2.4)
states its factor as it ran: ``/entry/process/binning`` held ``int(2.4)`` = 2 before."""

from __future__ import annotations

import io

import h5py
import pytest

from sbd_stream.formats import nexus


@pytest.mark.parametrize("factor, stored", [(2.4, 2.4), (4, 4), (4.0, 4)])
def test_the_process_group_states_the_factor_that_ran(factor: float, stored: float) -> None:
    with h5py.File(io.BytesIO(), "w") as f:
        nexus.create_entry(f, {"bin": factor, "working_pixel_A": 0.24, "created": 0.0})
        got = f["entry/process/binning"][()]
    assert got == pytest.approx(stored) and isinstance(got.item(), type(stored))
