"""``MAX_GAP`` (2^32) at its edges, unpinned before a mutation round (h31): a jump of exactly ``MAX_GAP``
frames is still a gap that counts them all, one more is the sender's own numbering (nothing missing);
a first frame numbered past it is an ordinary first frame, not a restart; a new acquisition on one
tracker whose first number is past it counts nothing missing and says nothing about a late start; and
the jump's warning is said once per acquisition, not once per jump."""

from __future__ import annotations

import logging

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.sources.sequence import (
    MAX_GAP,
    AcquisitionSequences,
    SeqEvent,
    SequenceTracker,
    count_sequence_event,
)

LOGGER = "sbd_stream.sources.sequence"


def _said(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and what in r.getMessage()]


def test_max_gap_is_two_to_the_32() -> None:
    assert MAX_GAP == 2**32  # docs/wire-format.md and the metrics docs name this number


@pytest.mark.parametrize("gap", [2**20 + 5, MAX_GAP - 1, MAX_GAP])
def test_a_gap_up_to_max_gap_counts_every_missing_frame(gap: int) -> None:
    t = AcquisitionSequences()
    m = Metrics()
    assert t.observe("a", 0, None) == (SeqEvent.ok, 0)
    event, missing = t.observe("a", gap + 1, None)  # frames 1 .. gap never came
    assert (event, missing) == (SeqEvent.gap, gap)
    count_sequence_event(m, event, missing)
    assert m.value("sbd_frames_missing_total") == gap and m.value("sbd_sequence_restarts_total") == 0


def test_one_past_max_gap_is_the_senders_numbering_with_nothing_missing() -> None:
    t = AcquisitionSequences()
    t.observe("a", 0, None)
    assert t.observe("a", MAX_GAP + 2, None) == (SeqEvent.restart, 0)  # MAX_GAP + 1 frames skipped
    assert t.observe("a", MAX_GAP + 3, None) == (SeqEvent.ok, 0)


@pytest.mark.parametrize("first", [MAX_GAP, MAX_GAP + 1])
def test_a_first_frame_at_the_edge(first: int, caplog: pytest.LogCaptureFixture) -> None:
    """Past -1: ``first`` frames before it (MAX_GAP: still counted as a late start), one more: none."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = AcquisitionSequences()
    event, missing = t.observe("a", first, None)
    if first == MAX_GAP:
        assert (event, missing) == (SeqEvent.gap, MAX_GAP)
    else:
        assert (event, missing) == (SeqEvent.ok, 0)  # its first frame: no restart, no new recording part
        assert not _said(caplog, "started at seq")
    assert t.observe("a", first + 1, None) == (SeqEvent.ok, 0)


def test_a_new_acquisition_on_one_tracker_numbered_past_max_gap_misses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = SequenceTracker()  # as the DECTRIS dialect holds one
    t.observe("a", 0, None)
    assert t.observe("b", 2**40, None) == (SeqEvent.restart, 0)
    assert not _said(caplog, "started at seq")  # no "2^40 frames before it were not received"
    assert len(_said(caplog, "taken as the sender's own numbering")) == 1


def test_the_jump_is_said_once_per_acquisition(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = AcquisitionSequences()
    t.observe("a", 0, None)
    assert t.observe("a", 2**40, None) == (SeqEvent.restart, 0)
    assert t.observe("a", 2**50, None) == (SeqEvent.restart, 0)  # the sender renumbered again
    assert len(_said(caplog, "taken as the sender's own numbering")) == 1
    t.observe("b", 2**40, None)
    assert len(_said(caplog, "taken as the sender's own numbering")) == 2  # b's own line
