"""Sequence accounting when a bridge restarts re-using the acquisition id, seen by one of several
instances sharing a PUSH stream: it gets every N-th frame, so it may never see seq 0 again.

The audit: one instance dropped its whole share of the new series as duplicates (raw frames never
recorded); another appended the new series into the old one's part (its numbers looked out of order).
"""

from __future__ import annotations

import pytest

from sbd_stream.sources.sequence import AcquisitionSequences, SeqEvent, SequenceTracker


def test_an_instance_with_every_other_frame_sees_the_restart_by_its_later_ts() -> None:
    t = AcquisitionSequences(reorder_window=1024)
    t.start("x")
    got = [t.observe("x", q, 100.0 + q)[0] for q in range(1, 60, 2)]  # the odd frames of series 1
    assert got[0] is SeqEvent.gap and set(got[1:]) == {SeqEvent.gap}  # each hole: the other's frame
    # the bridge came back, numbering from 0 again; this instance gets the odd frames once more
    assert t.observe("x", 1, 500.0) == (SeqEvent.restart, 0)  # was: a duplicate, dropped
    assert t.observe("x", 3, 502.0) == (SeqEvent.gap, 1)
    assert t.observe("x", 5, 504.0) == (SeqEvent.gap, 1)


def test_unseen_numbers_of_a_restarted_series_are_not_taken_for_late_frames() -> None:
    t = SequenceTracker(reorder_window=1024)
    for q in range(0, 30, 3):  # one instance of three: 0, 3, 6, ...
        t.observe("x", q, 10.0 + q)
    assert t.observe("x", 1, 90.0) == (SeqEvent.restart, 0)  # was: out of order, into the old part
    assert t.observe("x", 4, 93.0) == (SeqEvent.gap, 2)


def test_true_duplicates_and_late_frames_keep_their_meaning() -> None:
    t = SequenceTracker(reorder_window=1024)
    for q in (0, 1, 2, 4, 5):
        t.observe("x", q, 10.0 + q)
    assert t.observe("x", 4, 14.0) == (SeqEvent.duplicate, 0)  # the same frame again: the same ts
    assert t.observe("x", 3, 13.0) == (SeqEvent.out_of_order, 0)  # late: an earlier ts
    assert t.observe("x", 3, 13.0) == (SeqEvent.duplicate, 0)
    assert t.observe("x", 6, 16.0) == (SeqEvent.ok, 0)


@pytest.mark.parametrize("ts", [None, 0.0, 1234.5])
def test_a_constant_or_missing_ts_classifies_as_before(ts: float | None) -> None:
    t = SequenceTracker(reorder_window=16)
    for q in (0, 1, 2, 4):
        t.observe("x", q, ts)
    assert t.observe("x", 2, ts) == (SeqEvent.duplicate, 0)
    assert t.observe("x", 3, ts) == (SeqEvent.out_of_order, 0)
    assert t.observe("x", 0, ts) == (SeqEvent.restart, 0)  # seq 0 again: a restart, as always
