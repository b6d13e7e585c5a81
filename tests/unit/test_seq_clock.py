"""Restart detection that does not trust the sender's clock to go forward (audit "clocks", defect 2).

Pure: the input's ``SequenceTracker`` and the merge's ``ReorderBuffer`` share ``SeqTimes``: a number seen
before is a duplicate only with the same ``ts``; an unseen one below the newest is late only when its
``ts`` lies between its neighbours'. The socket-level repros are in tests/integration/test_clock_restarts.py.
"""

from __future__ import annotations

from sbd_stream.merge import ReorderBuffer
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START
from sbd_stream.sources.seqtimes import SeqTimes
from sbd_stream.sources.sequence import SeqEvent, SequenceTracker

D, S, E = TOPIC_DENOISED, TOPIC_SERIES_START, TOPIC_SERIES_END
AHEAD = 10800.0  # series 1 stamped 3 h ahead; the restarted sender's clock was put right


def test_seq_times_window_is_bounded_and_tells_repeats_late_frames_and_new_series() -> None:
    t = SeqTimes(4)
    for q in (0, 2, 4, 6, 8):
        t.add(q, 100.0 + q)
    assert 0 not in t and len(t) == 4  # the oldest forgotten
    assert t.fits(4, 104.0) and not t.fits(4, 104.5) and not t.fits(4, 3.0)  # repeat / another frame
    assert t.fits(5, 105.0) and t.fits(5, 104.0) and t.fits(5, 106.0)  # late, between its neighbours
    assert not t.fits(5, 103.9) and not t.fits(5, 106.1)  # would make ts go backwards
    assert t.fits(9, 109.0) and t.fits(5, None)  # no ts: nothing to tell


def test_a_seen_number_with_an_earlier_ts_is_a_restart_not_a_duplicate() -> None:
    t = SequenceTracker(reorder_window=1024)
    for q in range(20):
        t.observe("x", q, AHEAD + q)
    assert t.observe("x", 1, 1.0) == (SeqEvent.restart, 0)  # was: a duplicate, dropped
    assert t.observe("x", 3, 3.0) == (SeqEvent.gap, 1)
    assert t.observe("x", 3, 3.0) == (SeqEvent.duplicate, 0)  # the same frame again: still a duplicate


def test_an_unseen_number_with_an_earlier_ts_than_a_lower_one_is_a_restart_not_a_late_frame() -> None:
    t = SequenceTracker(reorder_window=1024)
    for q in range(0, 40, 2):  # one instance of two: the even frames
        t.observe("x", q, AHEAD + q)
    assert t.observe("x", 1, 1.0) == (SeqEvent.restart, 0)  # was: out of order, into the old part
    assert t.observe("x", 3, 3.0) == (SeqEvent.gap, 1)


def test_one_wild_ts_does_not_turn_the_rule_off_for_the_rest_of_the_acquisition() -> None:
    """A valid but wild ``ts`` (1e11, year 5138) was "the newest" for as long as it was remembered: no
    later frame was later, so no restart was seen. Now only its neighbours compare with it."""
    t = SequenceTracker(reorder_window=1024)
    for q in range(10):
        t.observe("x", q, 1e11 if q == 3 else 100.0 + q)
    assert t.observe("x", 6, 300.0) == (SeqEvent.restart, 0)


def test_the_merge_restarts_on_an_earlier_frame_without_a_start_and_keeps_the_old_stragglers_out() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start", {}, 0.0, AHEAD)
    for q in range(4):
        out += buf.push_frame(D, "x", q, q, 0.01 * q, AHEAD + 1 + q)
    out += buf.push_frame(D, "x", 1, "new1", 0.1, 2.0)  # the restarted sender, clock put right
    assert [r.seq for r in out][-1] == -1 and buf.total("restarts") == 1 and buf.total("duplicates") == 0
    assert buf.push_frame(D, "x", 2, "old2", 0.2, AHEAD + 3) == [] and buf.total("late") == 1  # straggler
    out = buf.push_frame(D, "x", 0, "new0", 0.3, 1.0) + buf.poll(1.4)
    assert [(r.seq, r.payload) for r in out] == [(0, "new0"), (1, "new1")]


def test_an_ended_series_restarts_on_an_earlier_frame_but_not_on_its_own_early_stragglers() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    buf.push_series(S, "x", "start", {}, 0.0, AHEAD)
    for q in (2, 3):  # the merge saw 2 and 3; 0 and 1 are still on their way from another instance
        buf.push_frame(D, "x", q, q, 0.0, AHEAD + q)
    buf.push_series(E, "x", "end", {}, 0.0, AHEAD + 5)
    buf.poll(1.1)
    assert buf.push_frame(D, "x", 1, "old1", 1.2, AHEAD + 1) == [] and buf.total("late") == 1
    out = buf.push_frame(D, "x", 2, "new2", 1.3, 2.0) + buf.poll(2.4)  # was: late, the new series lost
    assert [(r.seq, r.payload) for r in out] == [(2, "new2")] and buf.total("restarts") == 1
