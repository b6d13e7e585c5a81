"""Sequence accounting with many interleaved acquisitions, and how mid-series gaps are logged.

The audit: 80 acquisitions round-robin (8 frames each, none missing) gave 2240 "missing" frames and a
warning blaming the sender, because an acquisition evicted from the 64 tracked ones came back as a new
acquisition starting late; and 140 acquisitions that each lost frames 2-4 were counted but no log line
named any of them.
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.sources.sequence import AcquisitionSequences, SeqEvent, count_sequence_event

LOGGER = "sbd_stream.sources.sequence"


def _said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.mark.parametrize("with_start", [True, False])
def test_more_acquisitions_than_tracked_invent_no_missing_frames(
    caplog: pytest.LogCaptureFixture, with_start: bool
) -> None:
    m, t = Metrics(), AcquisitionSequences()
    acqs = [f"many-{i}" for i in range(80)]
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    if with_start:
        for a in acqs:
            t.start(a)
    events = []
    for seq in range(8):
        for a in acqs:
            event, missing = t.observe(a, seq, 1000.0 + seq + 0.001 * acqs.index(a))
            events.append(event)
            assert count_sequence_event(m, event, missing)
    assert m.value("sbd_frames_missing_total") == 0 and m.value("sbd_sequence_gaps_total") == 0
    restarts = 0 if with_start else 79  # without starts: each new acquisition beside the others
    assert m.value("sbd_sequence_restarts_total") == restarts
    assert events.count(SeqEvent.ok) == 640 - restarts
    assert not any("started at seq" in line for line in _said(caplog, logging.WARNING) + _said(caplog, 20))
    evicted = [line for line in _said(caplog, logging.WARNING) if "more than 64 acquisitions" in line]
    assert len(evicted) == 1, evicted  # said once; the rest at DEBUG (summed up once a minute)


def test_an_evicted_acquisition_still_counts_its_real_gaps_and_restarts() -> None:
    t = AcquisitionSequences(max_acqs=2)
    for a in ("x", "y", "z"):
        t.observe(a, 0, 10.0)
    assert t.observe("x", 3, 11.0) == (SeqEvent.gap, 2)  # x was evicted: frames 1-2 really missing
    t.observe("y", 1, 12.0)
    t.observe("z", 1, 12.0)  # x evicted again, its last number now 3
    assert t.observe("x", 0, 20.0) == (SeqEvent.restart, 0)  # seq 0 again: its sender restarted


def test_gaps_in_the_middle_of_a_series_are_logged_first_at_once_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m, t = Metrics(), AcquisitionSequences()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for a in ("a", "b"):
        t.start(a)
    for a, seqs in (("a", (0, 1, 5, 6, 9, 10, 12)), ("b", (0, 1, 2, 3))):
        for q in seqs:
            count_sequence_event(m, *t.observe(a, q, 100.0 + q))
    assert m.value("sbd_sequence_gaps_total") == 3 and m.value("sbd_frames_missing_total") == 3 + 2 + 1
    warnings = _said(caplog, logging.WARNING)
    assert len(warnings) == 1 and warnings[0].startswith("input: acquisition a: frames 2-4 missing (3)")
    assert "sbd_frames_missing_total" in warnings[0] and "PULL" in warnings[0]
    t.start("a")  # its next series: what was summed up of the last one is said now
    warnings = _said(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings
    assert warnings[1].startswith("input: acquisition a: 2 more gaps (3 frames missing) since the last line")
    assert "the latest frame 11" in warnings[1]
    for q in (0, 1, 4):  # the new series' first gap is said at once again
        count_sequence_event(m, *t.observe("a", q, 200.0 + q))
    assert _said(caplog, logging.WARNING)[-1].startswith("input: acquisition a: frames 2-3 missing (2)")
