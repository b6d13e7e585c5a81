"""Sequence-accounting edges a mutation round (h29b) found unpinned: which line a gap is named in, an
acquisition that starts at 0 beside another, and an evicted acquisition's last number repeated."""

from __future__ import annotations

import logging

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.sources.sequence import (
    AcquisitionSequences,
    SeqEvent,
    SequenceTracker,
    count_sequence_event,
)

LOGGER = "sbd_stream.sources.sequence"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_a_gap_after_frame_0_is_a_gap_not_a_late_start(caplog: pytest.LogCaptureFixture) -> None:
    t = SequenceTracker()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert t.observe("a", 0, 1.0) == (SeqEvent.ok, 0)
    assert t.observe("a", 4, 1.4) == (SeqEvent.gap, 3)
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert not any("started at seq" in line for line in said), said  # frame 0 came: the series did not
    assert any("1-3" in line and "missing (3)" in line for line in said), said


def test_a_second_acquisition_starting_at_0_is_no_late_start(caplog: pytest.LogCaptureFixture) -> None:
    t = AcquisitionSequences()
    caplog.set_level(logging.INFO, logger=LOGGER)
    t.observe("a", 0, 1.0)
    assert t.observe("b", 0, 2.0) == (SeqEvent.restart, 0)
    one = SequenceTracker()
    one.observe("a", 0, 1.0)
    assert one.observe("b", 0, 2.0) == (SeqEvent.restart, 0)  # a new id on a single tracker
    assert not [r for r in caplog.records if "started at seq" in r.getMessage()]


def test_an_evicted_acquisitions_last_number_again_is_a_duplicate() -> None:
    m, t = Metrics(), AcquisitionSequences(max_acqs=1)
    for q in range(3):
        t.observe("x", q, 10.0 + q)
    t.observe("y", 0, 20.0)  # x evicted, its last number (2) remembered
    event, missing = t.observe("x", 2, 12.0)
    assert (event, missing) == (SeqEvent.duplicate, 0)
    assert not count_sequence_event(m, event, missing)  # dropped, as the docstring says


def test_max_acqs_acquisitions_are_all_tracked_in_full(caplog: pytest.LogCaptureFixture) -> None:
    t = AcquisitionSequences(max_acqs=2)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for q in range(3):
        t.observe("x", q, 10.0 + q)
    t.observe("y", 0, 20.0)
    assert t.observe("x", 1, 11.0) == (SeqEvent.duplicate, 0)  # x kept in full: an earlier number again
    assert not [line for line in _warnings(caplog) if "more than 2 acquisitions" in line]


def test_remember_evicted_acquisitions_are_all_remembered() -> None:
    t = AcquisitionSequences(max_acqs=1, remember=2)
    for q in range(3):
        t.observe("x", q, 10.0 + q)
    t.observe("y", 0, 20.0)  # x evicted
    t.observe("z", 0, 30.0)  # y evicted: two remembered, x among them
    assert t.observe("x", 3, 13.0) == (SeqEvent.ok, 0)  # x goes on where it was, no late start


def test_only_the_first_late_start_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    t = AcquisitionSequences()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert t.observe("a", 5, 1.0) == (SeqEvent.gap, 5)
    assert t.observe("b", 7, 2.0) == (SeqEvent.restart, 7)
    late = [(r.levelno, r.getMessage()) for r in caplog.records if "started at seq" in r.getMessage()]
    assert [level for level, _ in late] == [logging.WARNING, logging.INFO], late


def test_a_new_series_forgets_the_old_series_numbers() -> None:
    t = AcquisitionSequences()
    for q in range(6):
        t.observe("a", q, 100.0 + q)
    t.start("a")  # series_start: numbering afresh
    for q in (0, 1, 3):
        t.observe("a", q, 200.0 + q)
    assert t.observe("a", 2, 202.0) == (SeqEvent.out_of_order, 0)  # not the old series' 2 (ts 102)
