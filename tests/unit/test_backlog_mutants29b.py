"""Backlog edges a mutation round (h29b) found unpinned: the budget is inclusive, ``take`` stops at its
count and at another dtype, an abandoned backlog forgets what it held, and an array is counted once
even when a frame's evidence names it twice."""

from __future__ import annotations

import numpy as np

from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.backlog import Backlog


def _frame(seq: int, shape: tuple[int, int] = (4, 4), dtype: str = "uint8") -> Frame:
    return Frame(FrameHeader("a", seq, 0.0, shape, dtype), np.zeros(shape, dtype))


def test_a_frame_that_fills_the_budget_exactly_is_kept() -> None:
    bl = Backlog(32)
    bl.add([_frame(0), _frame(1)])  # 16 + 16 bytes: exactly the budget
    assert len(bl) == 2 and bl.nbytes == 32 and bl.left == 0


def test_take_returns_at_most_its_count() -> None:
    bl = Backlog(10_000)
    bl.add([_frame(q) for q in range(5)])
    assert [f.header.seq for f in bl.take(2)] == [0, 1]
    assert len(bl) == 3 and bl.nbytes == 48


def test_take_stops_before_a_frame_of_another_dtype() -> None:
    bl = Backlog(10_000)
    bl.add([_frame(0), _frame(1, dtype="uint16"), _frame(2, dtype="uint16")])
    assert [f.header.seq for f in bl.take(8)] == [0]  # one engine call is one dtype
    assert [f.header.seq for f in bl.take(8)] == [1, 2]


def test_after_abandon_the_same_arrays_count_again() -> None:
    bl = Backlog(10_000)
    frames = [_frame(q) for q in range(3)]
    bl.add(frames)
    bl.abandon("out of time")
    bl.add(frames)  # the arrays were let go: their bytes are held anew, not taken as shared
    assert len(bl) == 3 and bl.nbytes == 48
    assert bl.take(8) and bl.nbytes == 0


def test_an_array_named_twice_by_a_frames_evidence_counts_once() -> None:
    shared = _frame(0)
    bl = Backlog(10_000)
    bl.evidence_of = lambda f: [shared, shared]  # two evidence slots on the same frame's array
    bl.add([_frame(1)])
    assert bl.nbytes == 16 + 16
    bl.add([_frame(2)])
    assert bl.nbytes == 16 * 3
    bl.take(1)
    assert bl.nbytes == 16 * 2  # the shared array is still held by frame 2
    bl.take(1)
    assert bl.nbytes == 0
