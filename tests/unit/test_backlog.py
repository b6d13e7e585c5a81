"""The complete lane's backlog: a byte budget, oldest first, one shape per batch, leftovers counted."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.backlog import Backlog


def _frame(seq: int, shape: tuple[int, int] = (4, 4), dtype: str = "uint8", acq: str = "a") -> Frame:
    return Frame(FrameHeader(acq, seq, 0.0, shape, dtype), np.zeros(shape, dtype))


def test_takes_oldest_first_in_batches_of_one_shape() -> None:
    depth: list[int] = []
    bl = Backlog(10_000, on_depth=depth.append)
    bl.add([_frame(0), _frame(1), _frame(2, (8, 4)), _frame(3)])
    assert len(bl) == 4 and bl.nbytes == 16 + 16 + 32 + 16
    assert [f.header.seq for f in bl.take(8)] == [0, 1]  # stops before the other shape
    assert [f.header.seq for f in bl.take(8)] == [2]
    assert [f.header.seq for f in bl.take(8)] == [3]
    assert bl.take(8) == [] and not bl and bl.nbytes == 0
    assert depth == [4, 2, 1, 0]


def test_a_frame_over_the_budget_is_left_for_offline_and_named_once(caplog: pytest.LogCaptureFixture) -> None:
    left: list[int] = []
    bl = Backlog(40, on_left=left.append)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.backlog"):
        bl.add([_frame(0), _frame(1)])  # 32 bytes: both fit
        bl.add([_frame(2), _frame(3)])  # 48 > 40: neither fits
        bl.add([_frame(4)])
    assert [f.header.seq for f in bl.take(8)] == [0, 1]
    assert left == [2, 1] and bl.left == 3 and bl.added == 2
    warnings = [r for r in caplog.records if "left for offline" in r.getMessage()]
    assert len(warnings) == 1 and "replay --offline" in warnings[0].getMessage()


def test_abandon_leaves_everything_waiting() -> None:
    left: list[int] = []
    bl = Backlog(10_000, on_left=left.append)
    bl.add([_frame(q) for q in range(5)])
    assert bl.abandon("out of time") == 5
    assert left == [5] and len(bl) == 0 and bl.nbytes == 0
    assert bl.abandon("again") == 0 and left == [5]
