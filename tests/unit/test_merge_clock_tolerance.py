"""Telling a restart from a repeat by ``ts``: rounding, a small NTP step back, copies of one start.

Pure: ``SequenceTracker`` and ``ReorderBuffer`` driven with explicit times. The audit found that

* a retransmission whose ``ts`` came back rounded (2.4e-7 s off) was taken for a restart, at the input
  (a new recording part and a phantom gap) and at the merge (a made-up ``series_end`` mid-series);
* after a bridge restart with its clock stepped back by 1 s (not 3 h as in the older tests), the merge
  dropped the new series' first second as "late" stragglers of the old one;
* a second copy of one ``series_start`` whose ``ts`` differed (each instance stamps its own receive time
  when the sender sent none) restarted the acquisition.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.merge import Released, ReorderBuffer
from sbd_stream.merge.streams import REMEMBER_TS
from sbd_stream.protocol import TOPIC_DENOISED as D
from sbd_stream.protocol import TOPIC_SERIES_END as E
from sbd_stream.protocol import TOPIC_SERIES_START as S
from sbd_stream.sources.seqtimes import SeqTimes
from sbd_stream.sources.sequence import SequenceTracker

T0 = 1_764_000_000.0


def n_topic(out: list[Released], topic: bytes) -> int:
    return sum(1 for r in out if r.topic == topic)


# --- rounding: a retransmission stays a duplicate ------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "resend"),
    [(T0, lambda t: round(t, 6)), (5000.0, lambda t: float(np.float32(t)))],
    ids=["unix-rounded-to-1us", "relative-float32"],
)
def test_a_retransmission_with_a_rounded_ts_is_a_duplicate_at_the_input(base: float, resend) -> None:
    t = SequenceTracker(1024)
    for q in range(100):
        t.observe("x", q, base + q / 30)
    resent = resend(base + 95 / 30)
    assert resent != base + 95 / 30  # really another float
    assert t.observe("x", 95, resent)[0].value == "duplicate"
    assert t.observe("x", 100, base + 100 / 30)[0].value == "ok"  # no phantom gap: 96-99 did arrive


def test_a_float32_relative_ts_fits_between_its_neighbours() -> None:
    times = SeqTimes(16)
    times.add(1, 5000.0)
    times.add(3, 5000.0 + 2 / 3)
    assert times.fits(2, float(np.float32(5000.0 + 1 / 3)))
    assert times.fits(3, float(np.float32(5000.0 + 2 / 3)))  # float32 of a ts below 16384 s: < 1 ms off


def test_a_real_restart_is_still_told_at_the_input() -> None:
    t = SequenceTracker(1024)
    for q in range(100):
        t.observe("x", q, T0 + q / 30)
    assert t.observe("x", 95, T0 + 95 / 30 - 0.5)[0].value == "restart"  # clock put back by 0.5 s


def test_a_retransmission_with_a_rounded_ts_is_a_duplicate_at_the_merge() -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "s", {}, 0.0, T0)
    for q in range(100):
        out += buf.push_frame(D, "x", q, q, 0.0, T0 + q / 30)
    out += buf.push_frame(D, "x", 95, "again", 0.1, round(T0 + 95 / 30, 6))
    for q in range(100, 110):
        out += buf.push_frame(D, "x", q, q, 0.2, T0 + q / 30)
    out += buf.push_series(E, "x", "e", {}, 0.3, T0 + 4) + buf.poll(5)
    assert buf.total("restarts") == 0 and buf.total("duplicates") == 1
    assert n_topic(out, S) == 1 and n_topic(out, E) == 1
    assert [r.seq for r in out if r.topic == D] == list(range(110))


# --- a restart with the clock stepped back a little ----------------------------------------------------
@pytest.mark.parametrize(
    "n_old", [100, REMEMBER_TS + 500], ids=["short-old-series", "old-longer-than-window"]
)
@pytest.mark.parametrize(
    ("with_new_start", "end_old"),
    [(False, False), (True, False), (False, True)],
    ids=["running", "running-new-start", "ended"],
)
def test_a_small_ntp_step_back_before_a_restart_loses_no_new_frame(
    n_old: int, with_new_start: bool, end_old: bool
) -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    now = 0.0
    out = buf.push_series(S, "x", "start1", {}, now, T0)
    for q in range(n_old):
        out += buf.push_frame(D, "x", q, ("old", q), now, T0 + 0.1 * q)
    if end_old:
        out += buf.push_series(E, "x", "end1", {}, now, T0 + 0.1 * n_old)
        now += 5
        out += buf.poll(now)
    t_new = T0 + 0.1 * (n_old - 1) + 0.5 - 1.0  # restarted 0.5 s later, its clock put back by 1 s
    for q in range(1, 40, 2):  # instance B's share reaches the merge first
        out += buf.push_frame(D, "x", q, ("new", q), now, t_new + 0.1 * q)
    if with_new_start:
        out += buf.push_series(S, "x", "start2", {"run": 2}, now, t_new)
    for q in range(0, 40, 2):
        out += buf.push_frame(D, "x", q, ("new", q), now, t_new + 0.1 * q)
    out += buf.push_series(E, "x", "end2", {}, now, t_new + 5) + buf.poll(now + 10)
    new = [r.seq for r in out if isinstance(r.payload, tuple) and r.payload[0] == "new"]
    assert new == list(range(40))
    assert buf.total("late") == 0 and buf.total("restarts") == 1


def test_stragglers_of_the_old_series_after_a_restart_are_late_not_a_new_restart() -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start1", {}, 0.0, T0)
    for q in range(0, 100, 2):  # instance A's share of the old series; B's odd frames lag
        out += buf.push_frame(D, "x", q, ("old", q), 0.0, T0 + 0.1 * q)
    t_new = T0 + 9.9 + 0.5 - 1.0
    for q in range(0, 20, 2):  # the restarted bridge's frames, through A
        out += buf.push_frame(D, "x", q, ("new", q), 0.1, t_new + 0.1 * q)
    assert buf.total("restarts") == 1
    for q in range(1, 100, 2):  # B's old-series frames, late: their ts fit the old series' numbers
        out += buf.push_frame(D, "x", q, ("old", q), 0.2, T0 + 0.1 * q)
    for q in range(1, 20, 2):
        out += buf.push_frame(D, "x", q, ("new", q), 0.3, t_new + 0.1 * q)
    out += buf.flush(5.0)
    assert buf.total("restarts") == 1 and buf.total("late") == 50
    assert [r.seq for r in out if isinstance(r.payload, tuple) and r.payload[0] == "new"] == list(range(20))


# --- copies of one series_start -------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [0.3, -0.3, 1.5], ids=["later", "earlier", "1.5s-later"])
def test_a_copy_of_the_series_start_stamped_by_another_instance_does_not_split_the_series(dt: float) -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    meta = {"series": 7, "exposure": 0.01}
    out = buf.push_series(S, "x", "start", dict(meta), 0.0, T0)
    for q in range(10):
        out += buf.push_frame(D, "x", q, q, 0.0, T0 + 0.1 * (q + 1))
    out += buf.push_series(S, "x", "copy", dict(meta), 0.1, T0 + dt)  # the start, via another instance
    for q in range(10, 20):
        out += buf.push_frame(D, "x", q, q, 0.2, T0 + 0.1 * (q + 1))
    out += buf.push_series(E, "x", "end", {}, 0.3, T0 + 3) + buf.poll(5.0)
    assert buf.total("restarts") == 0 and buf.total("series_dropped") == 1
    assert n_topic(out, S) == 1 and n_topic(out, E) == 1
    assert [r.seq for r in out if r.topic == D] == list(range(20))


def test_a_start_with_other_meta_after_frames_is_a_restart_even_with_a_close_ts() -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start", {"series": 7}, 0.0, T0)
    for q in range(5):
        out += buf.push_frame(D, "x", q, q, 0.0, T0 + 0.1 * (q + 1))
    out += buf.push_series(S, "x", "start2", {"series": 8}, 0.1, T0 + 0.3)
    assert buf.total("restarts") == 1 and [r.payload for r in out if r.topic == S] == ["start", "start2"]


def test_a_quick_restart_with_the_same_meta_keeps_its_start_once_its_frames_tell_it() -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start", {}, 0.0, T0)
    for q in range(5):
        out += buf.push_frame(D, "x", q, ("old", q), 0.0, T0 + 0.1 * (q + 1))
    out += buf.push_series(S, "x", "start2", {}, 0.6, T0 + 1.0)  # back within SAME_START_S
    for q in range(5):
        out += buf.push_frame(D, "x", q, ("new", q), 0.7, T0 + 1.0 + 0.1 * (q + 1))
    out += buf.push_series(E, "x", "end", {}, 0.8, T0 + 2) + buf.poll(5.0)
    got = [(r.topic, r.payload if r.topic == S else None) for r in out if r.topic in (S, E)]
    assert got == [(S, "start"), (E, None), (S, "start2"), (E, None)]
    assert buf.total("restarts") == 1 and buf.total("series_dropped") == 0
    assert [r.payload for r in out if r.topic == D] == [("old", q) for q in range(5)] + [
        ("new", q) for q in range(5)
    ]


def test_a_late_copy_of_an_ended_series_start_does_not_open_it_again() -> None:
    buf = ReorderBuffer(window=64, gap_timeout_s=1.0)
    out = buf.push_series(S, "x", "start", {"series": 7}, 0.0, T0)
    for q in range(5):
        out += buf.push_frame(D, "x", q, q, 0.0, T0 + 0.1 * (q + 1))
    out += buf.push_series(E, "x", "end", {}, 0.1, T0 + 1) + buf.poll(5.0)
    out += buf.push_series(S, "x", "copy", {"series": 7}, 6.0, T0)  # the same start, one instance late
    out += buf.poll(20.0)
    assert n_topic(out, S) == 1 and n_topic(out, E) == 1 and buf.total("series_dropped") == 1
    assert buf.total("restarts") == 0
