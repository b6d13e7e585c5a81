"""Sequence accounting at its boundaries: ``seq`` 0 again after one and two frames, a step back of exactly
the reorder window, and the frames missing before a second acquisition's late first frame.

docs/wire-format.md: "a repeat of a number seen in that acquisition's last 1024 frames with the same
``ts`` ... is a duplicate and is dropped"; "a small step back to an unseen number ... is a late frame,
kept"; "``seq`` 0 again, a step back by more than 1024, ... is a restart (``sbd_sequence_restarts_total``;
a new acquisition that starts late counts its missing frames too)". ``count_sequence_event``: "A restart
may also miss frames (a new acquisition whose first frame is not 0): both are counted". The late-start
warning tells the site those frames are "counted in sbd_frames_missing_total".
"""

from __future__ import annotations

from sbd_stream.metrics import Metrics
from sbd_stream.sources.sequence import AcquisitionSequences, SeqEvent, SequenceTracker, count_sequence_event


def _run(seqs: list[int], window: int = 1024) -> tuple[list[SeqEvent], list[bool], Metrics]:
    m, s = Metrics(), AcquisitionSequences(reorder_window=window)
    events, kept = [], []
    for q in seqs:
        event, missing = s.observe("c", q)
        events.append(event)
        kept.append(count_sequence_event(m, event, missing))
    return events, kept, m


def test_seq_zero_again_after_two_frames_is_a_restart_and_keeps_every_frame() -> None:
    """A sender restarting after frames 0 and 1 (no ``ts``): its new 0 and 1 are a new series, not
    duplicates (dropped: never recorded)."""
    events, kept, m = _run([0, 1, 0, 1, 2])
    assert events == [SeqEvent.ok, SeqEvent.ok, SeqEvent.restart, SeqEvent.ok, SeqEvent.ok]
    assert kept == [True] * 5
    assert m.value("sbd_sequence_restarts_total") == 1 and m.value("sbd_frames_duplicate_total") == 0


def test_seq_zero_again_after_more_frames_is_a_restart() -> None:
    events, kept, m = _run([0, 1, 2, 0])
    assert events[-1] is SeqEvent.restart and all(kept)
    assert m.value("sbd_sequence_restarts_total") == 1


def test_seq_zero_repeated_after_only_frame_zero_is_a_duplicate() -> None:
    """Without ``ts``, 0 after 0 is "a repeat of a number seen" (the other side of the ``last > 0`` rule)."""
    events, kept, m = _run([0, 0, 1])
    assert events == [SeqEvent.ok, SeqEvent.duplicate, SeqEvent.ok] and kept == [True, False, True]
    assert m.value("sbd_frames_duplicate_total") == 1 and m.value("sbd_sequence_restarts_total") == 0


def test_a_step_back_of_exactly_the_window_is_a_late_frame_one_more_is_a_restart() -> None:
    window = 1024
    events, kept, m = _run([0, 1030, 1030 - window], window)  # 6: back by exactly 1024, never seen
    assert events[-1] is SeqEvent.out_of_order and kept[-1]
    assert m.value("sbd_frames_out_of_order_total") == 1 and m.value("sbd_sequence_restarts_total") == 0
    events, _, m = _run([0, 1030, 1030 - window - 1], window)  # back by 1025: "more than 1024"
    assert events[-1] is SeqEvent.restart and m.value("sbd_sequence_restarts_total") == 1
    t = SequenceTracker(reorder_window=8)  # the tracker alone, a small window
    assert [t.observe("a", q)[0] for q in (0, 20, 12, 11)] == [
        SeqEvent.ok, SeqEvent.gap, SeqEvent.out_of_order, SeqEvent.restart,
    ]  # fmt: skip


def test_frames_missing_before_a_late_second_acquisition_are_counted() -> None:
    m, s = Metrics(), AcquisitionSequences()
    for acq, seq in [("a", 0), ("a", 1)]:
        assert count_sequence_event(m, *s.observe(acq, seq))
    event, missing = s.observe("b", 5)  # frames 0-4 of b never came
    assert (event, missing) == (SeqEvent.restart, 5)
    assert count_sequence_event(m, event, missing)
    assert m.value("sbd_frames_missing_total") == 5 and m.value("sbd_sequence_gaps_total") == 1
    assert m.value("sbd_sequence_restarts_total") == 1
    assert count_sequence_event(m, *s.observe("b", 6))
    assert m.value("sbd_frames_missing_total") == 5 and m.value("sbd_sequence_gaps_total") == 1
