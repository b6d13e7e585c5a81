"""``FrameFlags`` edges a mutation round (h29b) found unpinned, on a real ``BatchResult`` of a few
frames (no engine: the flags read only its per-frame values): the fixed band is inclusive, a blank frame
is marked blank whatever its vacuum said, the dose band picks the warning, warnings once per acquisition."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sbd_stream.frames import FrameHeader
from sbd_stream.service.batch_result import BatchResult
from sbd_stream.service.frame_flags import FrameFlags, fixed_mismatch

LOGGER = "sbd_stream.service.frame_flags"


def _res(n: int, acq: str = "a", **per_frame: list) -> BatchResult:
    res = BatchResult([FrameHeader(acq, i, 0.0, (2, 2), "uint16") for i in range(n)], [0.0] * n,
                      np.zeros((n, 2, 2), np.float32))  # fmt: skip
    res.level = np.full(n, 1.0)
    res.blank = np.zeros(n, bool)
    res.vacuum_not_flat = np.zeros(n, bool)
    for k, v in per_frame.items():
        setattr(res, k, np.asarray(v))
    return res


def test_the_fixed_band_is_inclusive_at_both_ends() -> None:
    res = _res(4, measured_vacuum=[0.9, 1.1, 0.89, 1.11])
    assert fixed_mismatch(res, 1.0).tolist() == [False, False, True, True]


def test_a_blank_frame_whose_vacuum_was_not_flat_is_marked_blank(caplog: pytest.LogCaptureFixture) -> None:
    res = _res(1, blank=[True], vacuum_not_flat=[True], vacuum=[0.001])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        FrameFlags(0.45).apply(res)
    assert res.headers[0].meta == {"blank": True}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "beam blanked" in said[0]


def test_a_not_flat_frame_at_the_edge_of_the_dose_band_is_told_too_little_vacuum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.8x and 1.25x of the configured dose are inside ``DOSE_BAND``: the cause named is the vacuum."""
    res = _res(1, vacuum_not_flat=[True], vacuum=[0.8])
    res2 = _res(1, acq="b", vacuum_not_flat=[True], vacuum=[1.25])
    res3 = _res(1, acq="c", vacuum_not_flat=[True], vacuum=[0.5])
    flags = FrameFlags(1.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for r in (res, res2, res3):
            flags.apply(r)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3
    assert "too little vacuum" in said[0] and "too little vacuum" in said[1], said
    assert "0.50x the configured" in said[2] and "too little vacuum" not in said[2]


def test_each_warning_once_per_acquisition(caplog: pytest.LogCaptureFixture) -> None:
    flags = FrameFlags(0.45)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        flags.apply(_res(3, blank=[True, True, True]))
        flags.apply(_res(2, blank=[True, True]))
        flags.apply(_res(1, acq="b", blank=[True]))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "acquisition a frame 0" in said[0] and "acquisition b frame 0" in said[1]


def test_the_fixed_warning_says_the_frames_level_over_the_fixed_one(caplog: pytest.LogCaptureFixture) -> None:
    res = _res(1, measured_vacuum=[0.5])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        FrameFlags(0.45, fixed=0.4).apply(res)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "is 1.25x the fixed likelihood vacuum_counts 0.4" in said[0], said
    assert res.headers[0].meta == {}  # counted and warned, not marked
