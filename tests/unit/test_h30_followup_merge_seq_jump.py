"""``sbd-stream merge`` counts a jump past ``MAX_GAP`` (2^32) as no loss, as the service's input does.

Before (audit h30 follow-up): with ``--first-seq 0`` a first frame numbered 2^63 - 2 (valid), or a jump
from 0 to 2^63 - 2 within a series, or a ``series_end`` stating ``frames_expected`` 2^63, added 9.2e18 to
``sbd_merge_frames_missing_total``, a float: every later gap of the run (+1) then vanished in its
rounding, as it did in ``sbd_frames_missing_total`` (``sources/sequence.py``). A jump of 2^40 counted
1.1e12 frames missing. Now such a range is remembered (a frame of it arriving later is late) but not
counted, and one WARNING per acquisition says so; an ordinary gap afterwards counts 1.
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.merge.metrics import MergeMetrics
from sbd_stream.merge.reorder import ReorderBuffer
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START
from sbd_stream.sources.sequence import MAX_GAP

BIG = 2**63 - 2


def missing(m: MergeMetrics) -> float:
    return m.value("sbd_merge_frames_missing_total", {"topic": "denoised"})


def one_frame_gap_after(b: ReorderBuffer, now: float) -> None:
    b.push_series(TOPIC_SERIES_START, "next", "s", {}, now, now)
    for seq in (0, 2):  # frame 1 never comes
        b.push_frame(TOPIC_DENOISED, "next", seq, "p", now, now + seq)
    b.poll(now + 10)


@pytest.mark.parametrize(
    "first_seq, seqs, end_meta",
    [
        (0, [BIG, BIG + 1], None),  # a first frame numbered 2^63 - 2 with --first-seq 0
        (None, [0, BIG, BIG + 1], None),  # a jump within the series
        (None, [0, 2**40], None),  # past 2^32, inside a double's exact range: still no 1.1e12 missing
        (None, [0, 1], {"frames_expected": 2**63}),  # an end stating more frames than any sender sends
    ],
)
def test_a_jump_past_max_gap_is_no_loss_and_later_gaps_still_count(
    first_seq: int | None, seqs: list[int], end_meta: dict | None, caplog: pytest.LogCaptureFixture
) -> None:
    m = MergeMetrics()
    b = ReorderBuffer(window=4, gap_timeout_s=0.5, first_seq=first_seq, on_count=m.count)
    b.push_series(TOPIC_SERIES_START, "a", "s", {}, 0.0, 0.0)
    released = []
    with caplog.at_level(logging.WARNING, logger="sbd_stream.merge.reorder"):
        for i, seq in enumerate(seqs):
            released += b.push_frame(TOPIC_DENOISED, "a", seq, "p", 0.0, 0.04 * i)
        released += b.push_series(TOPIC_SERIES_END, "a", "e", end_meta, 0.0)
        released += b.poll(5.0)
    assert [r.seq for r in released if r.topic == TOPIC_DENOISED] == seqs  # every frame still goes out
    assert missing(m) == 0 and b.total("missing") == 0 and b.total("gaps") == 0
    said = [r.getMessage() for r in caplog.records if "sender's numbering" in r.getMessage()]
    assert len(said) == 1 and str(MAX_GAP) in said[0]
    assert next(r.payload for r in released if r.topic == TOPIC_SERIES_END) == "e"
    one_frame_gap_after(b, 10.0)
    assert missing(m) == 1.0  # before: 9.2e18 + 1 == 9.2e18


def test_a_frame_inside_the_skipped_range_is_late_not_a_duplicate() -> None:
    m = MergeMetrics()
    b = ReorderBuffer(window=4, gap_timeout_s=0.5, on_count=m.count)
    b.push_series(TOPIC_SERIES_START, "a", "s", {}, 0.0, 0.0)
    b.push_frame(TOPIC_DENOISED, "a", 0, "p", 0.0, 0.0)
    b.push_frame(TOPIC_DENOISED, "a", 2**40, "p", 0.0, 0.04)
    b.poll(5.0)
    b.push_frame(TOPIC_DENOISED, "a", 5, "p", 5.0, 0.02)
    assert b.total("late") == 1 and b.total("duplicates") == 0 and missing(m) == 0
