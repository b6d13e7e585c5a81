"""The merge's reorder buffer when a sender restarts re-using an acquisition id, and its gap log.

Pure: driven with explicit times (``now``) and the messages' own ``ts``. The audit found a bridge that
crashed without ``series_end`` and came back with the same acquisition id: the merge dropped the new
``series_start`` and every frame of the new series as duplicates, then sent an end that claimed
nothing was missing. A stalled instance made it log one WARNING per missing frame.
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.merge import Released, ReorderBuffer
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START

D, S, E = TOPIC_DENOISED, TOPIC_SERIES_START, TOPIC_SERIES_END


def seqs(out: list[Released]) -> list[tuple[str, int]]:
    """What went out, as (topic, seq); series messages as (topic, -1)."""
    return [(r.topic.decode(), r.seq) for r in out]


def series(buf: ReorderBuffer, n: int, now: float, ts0: float, start: bool = True) -> list[Released]:
    """One series from a sender: its start (ts ``ts0``), then frames 0 .. n-1 with ts ``ts0 + 1 + q``."""
    out = buf.push_series(S, "x", "start", {}, now, ts0) if start else []
    for q in range(n):
        out += buf.push_frame(D, "x", q, q, now + 0.01 * q, ts0 + 1 + q)
    return out


def test_a_later_series_start_after_frames_went_out_starts_the_acquisition_anew() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = series(buf, 4, 0.0, 100.0)
    out += buf.push_frame(D, "x", 5, 5, 0.1, 106.0)  # 4 never came: held behind the hole
    assert seqs(out) == [("series_start", -1)] + [("denoised", q) for q in range(4)]
    out = series(buf, 3, 5.0, 200.0)  # the bridge came back: same id, numbering from 0
    ends = [r for r in out if r.topic == E]
    assert seqs(out) == [
        ("denoised", 5),  # the old series' held frame, its hole declared missing
        ("series_end", -1),  # made up: the sender sent none
        ("series_start", -1),
        ("denoised", 0),
        ("denoised", 1),
        ("denoised", 2),
    ]
    assert ends[0].payload is None
    assert ends[0].merged == {"frames": {"denoised": 5}, "missing": {"denoised": 1}}
    assert buf.total("restarts") == 1 and buf.total("duplicates") == 0 and buf.total("series_dropped") == 0
    out = buf.push_series(E, "x", "end", {"frames_expected": 3}, 5.1, 205.0)
    assert seqs(out) == [("series_end", -1)] and out[0].merged == {
        "frames": {"denoised": 3},
        "missing": {"denoised": 0},
    }


def test_the_same_start_forwarded_by_several_instances_goes_out_once() -> None:
    """Instances that each got the start forward it with the sender's own ts: one series, one start."""
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = series(buf, 3, 0.0, 100.0)
    out += buf.push_series(S, "x", "start again", {}, 0.5, 100.0)  # another instance's copy, frames out
    out += buf.push_series(S, "x", "joined", {"joined": True}, 0.6, 150.0)  # a DECTRIS joined start
    out += buf.push_series(S, "x", "resumed", {"resumed": True}, 0.7, 160.0)  # reopened after a pause
    assert seqs(out).count(("series_start", -1)) == 1 and buf.total("restarts") == 0
    assert buf.total("series_dropped") == 3


def test_a_real_start_after_a_joined_one_is_the_announcement_not_a_restart() -> None:
    """DECTRIS: the instance without the start joins first; the start itself may come after frames."""
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "joined", {"joined": True}, 0.0, 50.0)
    out += buf.push_frame(D, "x", 0, 0, 0.0, 1.0)
    out += buf.push_series(S, "x", "start", {}, 0.1, 40.0)  # the lagging instance's start
    out += buf.push_frame(D, "x", 1, 1, 0.2, 2.0)
    assert seqs(out) == [("series_start", -1), ("denoised", 0), ("denoised", 1)]
    assert buf.total("restarts") == 0 and buf.total("series_dropped") == 1


def test_a_restarted_sender_without_a_start_is_told_by_a_later_ts() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = series(buf, 4, 0.0, 100.0)
    out += buf.push_frame(D, "x", 3, "dup", 0.1, 104.0)  # a duplicate: same ts
    out += buf.push_frame(D, "x", 1, 1, 0.2, 200.0)  # an instance's first frame of the new series
    assert buf.total("duplicates") == 1 and buf.total("restarts") == 1
    assert seqs(out)[-1] == ("series_end", -1) and out[-1].payload is None
    out = buf.push_frame(D, "x", 0, 0, 0.3, 199.0)
    assert out == []  # the new series waits for its start, up to the gap timeout
    out = buf.poll(1.3)
    assert seqs(out) == [("denoised", 0), ("denoised", 1)]
    # a straggler of the old series (its ts up to the old newest) is not put into the new one
    assert buf.push_frame(D, "x", 2, "old", 1.4, 103.0) == [] and buf.total("late") == 1


def test_an_ended_acquisition_starts_anew_on_a_later_frame_but_drops_its_stragglers() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = series(buf, 2, 0.0, 100.0) + buf.push_series(E, "x", "end", {"frames_expected": 2}, 0.1, 103.0)
    assert seqs(out)[-1] == ("series_end", -1)
    assert buf.push_frame(D, "x", 1, "straggler", 0.2, 102.0) == [] and buf.total("late") == 1
    out = buf.push_frame(D, "x", 0, 0, 0.3, 300.0)  # a sender that came back without a start
    out += buf.poll(1.4)
    assert seqs(out) == [("denoised", 0)] and buf.total("restarts") == 1


@pytest.mark.parametrize("ts", [None, 0.0, 7.0])
def test_without_a_changing_ts_a_repeat_is_dropped_as_before(ts: float | None) -> None:
    """A sender with a constant (or no) ts: a second start and repeated numbers are duplicates."""
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start", {}, 0.0, ts)
    for q in range(3):
        out += buf.push_frame(D, "x", q, q, 0.0, ts)
    out += buf.push_series(S, "x", "start", {}, 1.0, ts)
    for q in range(3):
        out += buf.push_frame(D, "x", q, q, 1.0, ts)
    assert seqs(out) == [("series_start", -1), ("denoised", 0), ("denoised", 1), ("denoised", 2)]
    assert buf.total("restarts") == 0 and buf.total("duplicates") == 3 and buf.total("series_dropped") == 1


def test_a_stalled_instance_logs_its_gaps_summed_up_not_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every other frame missing for 30 s: the first gap at once, then one line per 10 s, counters exact."""
    buf = ReorderBuffer(window=4, gap_timeout_s=0.5)
    buf.push_series(S, "x", "start", {}, 0.0)
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        for q in range(0, 600, 2):  # 20 frames a second, the odd ones never come
            buf.push_frame(D, "x", q, q, q / 20)
            buf.poll(q / 20)
        buf.push_series(E, "x", "end", {}, 30.0)
        buf.poll(31.0)  # the end goes out: what was summed up since the last line is logged
    lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert buf.total("gaps") == 299 and buf.total("missing") == 299  # every hole counted
    assert lines[0] == "merge: x denoised: frame 1 missing (1)"
    assert 3 <= len(lines) <= 5, lines  # 30 s: the first line, about one per 10 s, the last
    summed = [int(line.split(" more gaps (")[0].rsplit(" ", 1)[1]) for line in lines[1:]]
    assert sum(summed) == 298 and all("more gaps" in line for line in lines[1:])


def test_a_restart_while_the_old_series_is_held_is_not_taken_for_duplicates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The audit (run6): no series_start, frames 0-3 held waiting for one, and the sender restarted
    0.3 s later with the same numbers and later ts. Every new frame was dropped as a duplicate (16 of
    them), no restart was counted, and the merge then waited for a frame 4 that never came."""
    buf = ReorderBuffer(window=16, gap_timeout_s=2.0)
    out = series(buf, 4, 0.0, 100.0, start=False)  # held: waiting for a start that never comes
    assert out == []
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        out = series(buf, 4, 0.3, 110.0, start=False)  # the restarted sender: 0-3 again, later ts
    assert seqs(out) == [("denoised", q) for q in range(4)] + [("series_end", -1)]  # the old, then its end
    assert [r.payload for r in out[:4]] == [0, 1, 2, 3] and out[-1].payload is None
    assert buf.total("restarts") == 1 and buf.total("duplicates") == 0
    assert any("x starts anew" in r.getMessage() for r in caplog.records)
    out = buf.poll(2.4)  # the new series' frames went without a start too: both series in full
    assert seqs(out) == [("denoised", q) for q in range(4)]
    assert buf.total("frames") == 8 and buf.total("gaps") == 0 and buf.total("late") == 0


def test_a_restart_while_the_old_series_waits_behind_a_gap_keeps_both_series() -> None:
    """With a start: frame 1 lost, 2-3 held behind it; the restarted sender's frame 2 (another
    instance got its 0 and 1) is later than every frame so far, so it is the new series' frame 2."""
    buf = ReorderBuffer(window=16, gap_timeout_s=2.0)
    out = buf.push_series(S, "x", "start", {}, 0.0, 99.0)
    for q in (0, 2, 3):
        out += buf.push_frame(D, "x", q, f"old{q}", 0.01 * q, 100.0 + q)
    out += buf.push_frame(D, "x", 3, "dup", 0.05, 103.0)  # a true duplicate repeats its ts
    assert seqs(out) == [("series_start", -1), ("denoised", 0)] and buf.total("duplicates") == 1
    out = buf.push_frame(D, "x", 2, "new2", 0.5, 202.0)
    assert [(r.seq, r.payload) for r in out] == [(2, "old2"), (3, "old3"), (-1, None)]
    assert out[-1].merged == {"frames": {"denoised": 3}, "missing": {"denoised": 1}}
    out = buf.push_frame(D, "x", 0, "new0", 0.6, 200.0) + buf.push_frame(D, "x", 1, "new1", 0.7, 201.0)
    out += buf.poll(2.6)
    assert [(r.seq, r.payload) for r in out] == [(0, "new0"), (1, "new1"), (2, "new2")]
    assert buf.total("restarts") == 1 and buf.total("duplicates") == 1 and buf.total("late") == 0
