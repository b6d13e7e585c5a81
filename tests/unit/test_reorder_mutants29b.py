"""Reorder-buffer edges a mutation round (h29b) found unpinned: an end announcing 0 frames, a malformed
``frames_expected``, the start gate at exactly ``window`` frames, and which acquisition is flushed when
one with a pending end has had no frame for a while."""

from __future__ import annotations

import pytest

from sbd_stream.merge import Released, ReorderBuffer
from sbd_stream.merge.reorder import MAX_OPEN_ACQS
from sbd_stream.protocol import TOPIC_DENOISED as D
from sbd_stream.protocol import TOPIC_SERIES_END as E
from sbd_stream.protocol import TOPIC_SERIES_START as S


def _seqs(out: list[Released], acq: str) -> list[int]:
    return [r.seq for r in out if r.topic == D and r.acq == acq]


def _ends(out: list[Released], acq: str) -> list[Released]:
    return [r for r in out if r.topic == E and r.acq == acq]


def test_an_end_announcing_no_frames_goes_out_at_once() -> None:
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"s", {}, now=0.0)
    out += buf.push_series(E, "a", b"e", {"frames_expected": 0}, now=1.0)  # no frame will come
    assert len(_ends(out, "a")) == 1 and "a" not in buf.acqs


def test_a_boolean_frames_expected_is_ignored() -> None:
    """``frames_expected: true`` is no count (bool is an int in Python): the end waits its timeout."""
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"s", {}, now=0.0) + buf.push_frame(D, "a", 0, b"0", now=0.0)
    out += buf.push_series(E, "a", b"e", {"frames_expected": True}, now=1.0)
    assert _seqs(out, "a") == [0] and _ends(out, "a") == []  # frame 1.. may still be on its way
    out += buf.push_frame(D, "a", 1, b"1", now=2.0)
    assert _seqs(out, "a") == [0, 1] and buf.total("late") == 0
    out += buf.poll(now=200.0)
    assert len(_ends(out, "a")) == 1


def test_frames_wait_for_their_start_until_more_than_window_are_held() -> None:
    window = 3
    buf = ReorderBuffer(window=window, gap_timeout_s=100.0)
    out: list[Released] = []
    for q in range(window):  # exactly `window` frames wait for the start
        out += buf.push_frame(D, "a", q, q, now=0.0)
    assert out == [] and buf.total("joined") == 0
    out += buf.push_series(S, "a", b"s", {}, now=0.0)  # it came: forwarded first, nothing joined
    assert out[0].topic == S and _seqs(out, "a") == [0, 1, 2]
    assert buf.total("joined") == 0


def test_an_acquisition_whose_end_came_recently_is_not_the_one_flushed() -> None:
    """Least recently active counts its end too: an acquisition waiting out its end's stragglers
    (``gap_timeout_s`` after the end) is not flushed before ones idle longer."""
    buf = ReorderBuffer(window=64, gap_timeout_s=1000.0)
    out = buf.push_series(S, "ended", b"s", {}, now=0.0) + buf.push_frame(D, "ended", 1, b"1", now=0.0)
    for i in range(MAX_OPEN_ACQS - 1):
        out += buf.push_series(S, f"idle{i}", b"s", {}, now=1.0 + 0.1 * i)
        out += buf.push_frame(D, f"idle{i}", 1, b"1", now=1.0 + 0.1 * i)
    out += buf.push_series(E, "ended", b"e", {}, now=50.0)  # frame 0 may still come
    assert len(buf.acqs) == MAX_OPEN_ACQS and _ends(out, "ended") == []
    out += buf.push_frame(D, "new", 0, b"0", now=60.0)
    assert "ended" in buf.acqs and "idle0" not in buf.acqs
    out += buf.push_frame(D, "ended", 0, b"0", now=61.0)  # its straggler still goes out
    assert _seqs(out, "ended") == [0, 1] and buf.total("late") == 0


def test_every_ended_acquisition_up_to_remember_closed_is_remembered() -> None:
    from sbd_stream.merge.reorder import REMEMBER_CLOSED

    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    for i in range(REMEMBER_CLOSED + 1):  # the first one is forgotten, the other REMEMBER_CLOSED kept
        buf.push_series(S, f"a{i}", b"s", {}, now=float(i))
        buf.push_frame(D, f"a{i}", 0, b"0", now=float(i))
        buf.push_series(E, f"a{i}", b"e", {"frames_expected": 1}, now=float(i))
    assert not buf.acqs and len(buf.closed) == REMEMBER_CLOSED
    assert buf.push_frame(D, "a1", 0, b"0", now=300.0) == []  # a straggler of a remembered one
    assert buf.total("late") == 1 and "a1" not in buf.acqs


def test_a_frame_below_the_learnt_first_number_is_late_not_a_duplicate() -> None:
    buf = ReorderBuffer(window=2, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"s", {}, now=0.0)
    for q in (3, 4, 5):  # no frame 0: more than `window` wait, so 3 is taken as the first
        out += buf.push_frame(D, "a", q, q, now=0.0)
    assert _seqs(out, "a") == [3, 4, 5]
    assert buf.push_frame(D, "a", 1, 1, now=0.1) == []
    assert buf.total("late") == 1 and buf.total("duplicates") == 0


def _copied_start(buf: ReorderBuffer) -> list[Released]:
    """Start ts 10, frames 0-1 out, then a start like it 1 s later (maybe another instance's copy)."""
    out = buf.push_series(S, "a", b"s1", {}, now=0.0, ts=10.0)
    out += buf.push_frame(D, "a", 0, b"0", now=0.1, ts=10.1)
    out += buf.push_frame(D, "a", 1, b"1", now=0.2, ts=10.2)
    out += buf.push_series(S, "a", b"s2", {}, now=1.0, ts=11.0)
    assert _seqs(out, "a") == [0, 1] and [r.payload for r in out if r.topic == S] == [b"s1"]
    return out


def test_a_start_its_frames_prove_a_restart_is_forwarded_within_the_gap_timeout() -> None:
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    out = _copied_start(buf)
    out += buf.push_frame(D, "a", 0, b"new0", now=6.0, ts=11.1)  # 5 s later: frame 0 again, another ts
    assert buf.total("restarts") == 1
    assert [r.payload for r in out if r.topic == S] == [b"s1", b"s2"]  # the sender's own new start
    assert [r.payload for r in out if r.topic == D][-1] == b"new0"


def test_a_second_maybe_copy_replacing_the_first_counts_it_dropped() -> None:
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    _copied_start(buf)
    buf.push_series(S, "a", b"s3", {}, now=1.5, ts=11.5)  # replaces s2, which is dropped
    assert buf.stats[("series_dropped", "series_start")] == 1
    buf.push_series(E, "a", b"e", {"frames_expected": 2}, now=2.0)  # closes: s3 was a copy after all
    assert buf.stats[("series_dropped", "series_start")] == 2 and "a" not in buf.acqs


def test_a_second_start_before_any_frame_went_out_restarts_nothing() -> None:
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    out = buf.push_series(S, "a", b"s1", {}, now=0.0, ts=10.0)
    out += buf.push_series(S, "a", b"s2", {}, now=0.5, ts=20.0)  # nothing of the series went out yet
    assert buf.total("restarts") == 0 and _ends(out, "a") == []
    assert [r.payload for r in out if r.topic == S] == [b"s1"]


def test_joined_at_seq_0_names_only_the_start_as_unseen(caplog: pytest.LogCaptureFixture) -> None:
    buf = ReorderBuffer(window=1, gap_timeout_s=100.0)
    with caplog.at_level("WARNING", logger="sbd_stream.merge.reorder"):
        out = buf.push_frame(D, "a", 0, b"0", now=0.0) + buf.push_frame(D, "a", 1, b"1", now=0.0)
    assert _seqs(out, "a") == [0, 1] and buf.total("joined") == 1
    lines = [r.getMessage() for r in caplog.records if "no series_start" in r.getMessage()]
    assert len(lines) == 1 and "at seq 0, series_start not seen" in lines[0], lines


def test_a_frame_with_a_ts_after_a_series_without_ts_ended_is_late() -> None:
    buf = ReorderBuffer(window=8, gap_timeout_s=100.0)
    buf.push_series(S, "a", b"s", {}, now=0.0)
    buf.push_frame(D, "a", 0, b"0", now=0.0)  # no ts: the ended series keeps no seq -> ts
    buf.push_series(E, "a", b"e", {"frames_expected": 1}, now=0.0)
    assert "a" in buf.closed and buf.closed["a"] is None
    assert buf.push_frame(D, "a", 0, b"0", now=1.0, ts=5.0) == []
    assert buf.total("late") == 1
