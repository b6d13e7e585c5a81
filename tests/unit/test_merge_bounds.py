"""The merge's reorder buffer at its bounds: the acquisition flushed past ``MAX_OPEN_ACQS`` and the
window that settles a stream's first number.

reorder.py: ``MAX_OPEN_ACQS`` -- "acquisitions with state; past this the least recently active one is
flushed". Flushing the wrong one (the active one) drops its frames still on their way as *late*: they are
missing from the merged stream. The module docstring: a ``seq`` that has not come is declared missing
"when more than ``window`` later frames are waiting"; docs/scale-out-nodes.md: the first number of a
stream is "learnt (0 at once, else the lowest seen within the gap timeout)", and frames are declared
missing "when more than ``--window`` (64) later frames wait behind it".
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.merge import Released, ReorderBuffer
from sbd_stream.merge.reorder import MAX_OPEN_ACQS
from sbd_stream.protocol import TOPIC_DENOISED as D
from sbd_stream.protocol import TOPIC_SERIES_START as S


def _seqs(out: list[Released], acq: str) -> list[int]:
    return [r.seq for r in out if r.topic == D and r.acq == acq]


def test_past_max_open_acquisitions_the_least_recently_active_is_flushed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=100.0)
    out: list[Released] = []
    for i in range(MAX_OPEN_ACQS - 1):  # idle acquisitions, each holding frame 1 (frame 0 never comes)
        out += buf.push_series(S, f"old{i}", b"", {}, now=float(i))
        out += buf.push_frame(D, f"old{i}", 1, b"x", now=float(i))
    out += buf.push_series(S, "live", b"", {}, now=100.0)
    out += buf.push_frame(D, "live", 1, b"x", now=100.0)  # live's frame 0 is still on its way
    assert len(buf.acqs) == MAX_OPEN_ACQS and _seqs(out, "live") == []
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        out += buf.push_frame(D, "new", 0, b"x", now=101.0)  # one more acquisition opens
    assert "old0" not in buf.acqs, "the acquisition idle longest (last frame at t = 0) is the one flushed"
    assert {"live", "new", *(f"old{i}" for i in range(1, MAX_OPEN_ACQS - 1))} == set(buf.acqs)
    assert _seqs(out, "old0") == [1]  # flushed: what it held went out
    assert any("flushing old0" in r.getMessage() for r in caplog.records)

    out += buf.push_frame(D, "live", 0, b"x", now=101.5)  # well within the gap timeout
    assert _seqs(out, "live") == [0, 1], "the active acquisition loses nothing"
    assert buf.stats[("late", "denoised")] == 0


def test_the_first_number_settles_when_more_than_window_frames_wait() -> None:
    """No frame 0 and no gap timeout: the lowest number seen is taken as the first once *more than*
    ``window`` frames wait, not when exactly ``window`` do."""
    window = 4
    buf = ReorderBuffer(window=window, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"", {}, now=0.0)
    for q in range(3, 3 + window):  # exactly `window` frames wait: maybe a lower number is on its way
        out += buf.push_frame(D, "a", q, q, now=0.0)
    assert _seqs(out, "a") == []
    out += buf.push_frame(D, "a", 2, 2, now=0.0)  # ... and here it is: still no decision (5 > 4 now)
    assert _seqs(out, "a") == [2, 3, 4, 5, 6]
    assert buf.total("missing") == 0 and buf.total("late") == 0


def test_a_gap_is_declared_only_when_more_than_window_frames_wait() -> None:
    window = 4
    buf = ReorderBuffer(window=window, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"", {}, now=0.0) + buf.push_frame(D, "a", 0, 0, now=0.0)
    for q in range(2, 2 + window):  # frame 1 missing, exactly `window` later frames wait
        out += buf.push_frame(D, "a", q, q, now=0.0)
    assert _seqs(out, "a") == [0] and buf.total("missing") == 0
    out += buf.push_frame(D, "a", 1, 1, now=0.0)  # it came in time
    assert _seqs(out, "a") == [0, 1, 2, 3, 4, 5] and buf.total("late") == 0
