"""The merge stage's reorder buffer (pure: driven with explicit times) and its message handling."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, handshake, wait_until

from sbd_stream.merge import MergeService, Released, ReorderBuffer
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_LLR,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    SeriesMessage,
    decode,
    encode_frame,
    encode_series,
)

D, L, S, E = TOPIC_DENOISED, TOPIC_LLR, TOPIC_SERIES_START, TOPIC_SERIES_END


def frames(out: list[Released], topic: bytes = D, acq: str | None = None) -> list[int]:
    return [r.seq for r in out if r.topic == topic and (acq is None or r.acq == acq)]


def topics(out: list[Released]) -> list[bytes]:
    return [r.topic for r in out]


def started(buf: ReorderBuffer, acq: str = "a", now: float = 0.0) -> list[Released]:
    return buf.push_series(S, acq, "start", {}, now)


def test_in_order_frames_go_straight_through_after_the_start() -> None:
    buf = ReorderBuffer(window=4, gap_timeout_s=1.0)
    out = started(buf)
    for q in range(5):
        out += buf.push_frame(D, "a", q, f"p{q}", 0.1 * q)
    assert topics(out)[0] == S and frames(out) == [0, 1, 2, 3, 4]
    assert [r.payload for r in out[1:]] == [f"p{q}" for q in range(5)]
    assert buf.total("frames") == 5 and buf.total("gaps") == 0 and buf.buffered == 0


def test_out_of_order_shares_are_put_back_in_order() -> None:
    """Two instances: odd frames come before even ones, in bursts."""
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    out = started(buf)
    for q in (1, 3, 0, 5, 2, 4, 7, 6):
        out += buf.push_frame(D, "a", q, q, 0.0)
    assert frames(out) == list(range(8))
    assert buf.total("gaps") == 0 and buf.total("duplicates") == 0


def test_frames_wait_for_the_series_start_then_follow_it() -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    assert buf.push_frame(D, "a", 0, 0, 0.0) == [] and buf.push_frame(D, "a", 1, 1, 0.1) == []
    out = buf.push_series(S, "a", "start", {}, 0.2)
    assert topics(out) == [S, D, D] and frames(out) == [0, 1]


def test_without_a_start_frames_go_after_the_gap_timeout(caplog: pytest.LogCaptureFixture) -> None:
    buf = ReorderBuffer(window=16, gap_timeout_s=1.0)
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        assert buf.push_frame(D, "a", 0, 0, 0.0) == []
        assert buf.poll(0.5) == []
        assert frames(buf.poll(1.0)) == [0]
    assert "no series_start for a" in caplog.text
    assert buf.push_series(S, "a", "late start", {}, 1.1) == []  # once frames went, a start is dropped
    assert buf.stats[("series_dropped", "series_start")] == 1


def test_a_gap_is_declared_when_the_window_is_passed(caplog: pytest.LogCaptureFixture) -> None:
    buf = ReorderBuffer(window=3, gap_timeout_s=100.0)
    out = started(buf)
    out += buf.push_frame(D, "a", 0, 0, 0.0)
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        for q in (3, 4, 5):  # 1 and 2 missing: three later frames held, not yet more than the window
            out += buf.push_frame(D, "a", q, q, 0.0)
        assert frames(out) == [0]
        out += buf.push_frame(D, "a", 6, 6, 0.0)  # four > window: 1-2 declared missing
    assert frames(out) == [0, 3, 4, 5, 6]
    assert buf.total("gaps") == 1 and buf.total("missing") == 2
    gap_lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert gap_lines == ["merge: a denoised: frames 1-2 missing (2)"]  # once per contiguous range


def test_a_gap_is_declared_after_the_gap_timeout() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf)
    out += buf.push_frame(D, "a", 0, 0, 0.0)
    out += buf.push_frame(D, "a", 2, 2, 0.2)  # waits for 1 since t = 0.2
    assert buf.poll(1.1) == []
    out += buf.poll(1.2)
    assert frames(out) == [0, 2]
    assert buf.stats[("gaps", "denoised")] == 1 and buf.stats[("missing", "denoised")] == 1
    # each frame waits at most the timeout for a hole before it: 4 after 3 is missing too
    out += buf.push_frame(D, "a", 4, 4, 1.3)
    out += buf.poll(2.29)
    assert frames(out) == [0, 2]
    out += buf.poll(2.31)
    assert frames(out) == [0, 2, 4] and buf.total("missing") == 2


def test_duplicates_and_late_frames_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf)
    out += buf.push_frame(D, "a", 0, 0, 0.0)
    out += buf.push_frame(D, "a", 0, "again", 0.1)  # already released
    out += buf.push_frame(D, "a", 2, 2, 0.1)
    out += buf.push_frame(D, "a", 2, "again", 0.2)  # still held
    out += buf.poll(1.5)  # 1 declared missing
    with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
        out += buf.push_frame(D, "a", 1, 1, 1.6)  # came after all: late, dropped
        out += buf.push_frame(D, "a", 1, 1, 1.7)
    assert frames(out) == [0, 2] and [r.payload for r in out[1:]] == [0, 2]
    assert buf.total("duplicates") == 2 and buf.total("late") == 2
    assert sum("declared missing" in r.getMessage() for r in caplog.records) == 1  # once per acquisition


def test_series_end_waits_for_stragglers_then_goes_last() -> None:
    """One instance got the end while the other's frames were still on their way."""
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf)
    for q in (0, 2, 4):  # instance A's share and its end
        out += buf.push_frame(D, "a", q, q, 0.0)
    out += buf.push_series(E, "a", "end", {}, 0.1)
    assert E not in topics(out)
    out += buf.push_frame(D, "a", 1, 1, 0.6)  # instance B lags
    out += buf.push_frame(D, "a", 3, 3, 0.9)
    out += buf.poll(1.8)  # 0.9 s after B's last frame: still waiting for stragglers
    assert E not in topics(out)
    out += buf.push_frame(D, "a", 5, 5, 1.85)
    out += buf.push_series(E, "a", "B's end (timeout)", {}, 1.9)  # a second end: dropped
    out += buf.poll(2.86)
    assert frames(out) == [0, 1, 2, 3, 4, 5] and topics(out)[-1] == E
    end = out[-1]
    assert end.payload == "end" and end.merged == {"frames": {"denoised": 6}, "missing": {"denoised": 0}}
    assert buf.push_frame(D, "a", 6, 6, 3.0) == [] and buf.push_series(E, "a", "x", {}, 3.0) == []
    assert buf.total("late") == 1 and buf.total("series_dropped") == 2 and not buf.acqs
    out = buf.push_series(S, "a", "restart", {}, 4.0)  # a restarted sender re-using the id: new series
    out += buf.push_frame(D, "a", 0, 0, 4.0)
    assert topics(out) == [S, D] and frames(out) == [0]


def test_series_end_with_the_expected_count_goes_as_soon_as_everything_came() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=5.0)
    out = started(buf)
    out += buf.push_frame(D, "a", 0, 0, 0.0)
    out += buf.push_series(E, "a", "end", {"frames_expected": 3}, 0.1)
    out += buf.push_frame(D, "a", 2, 2, 0.2)
    assert E not in topics(out)
    out += buf.push_frame(D, "a", 1, 1, 0.3)
    assert frames(out) == [0, 1, 2] and topics(out)[-1] == E


def test_series_end_after_the_timeout_declares_the_holes_and_a_missing_tail() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf)
    for q in (0, 2):
        out += buf.push_frame(D, "a", q, q, 0.0)
        out += buf.push_frame(L, "a", q, q, 0.0)
    out += buf.push_series(E, "a", "end", {"frames_expected": 5}, 0.5)
    out += buf.poll(1.5)
    assert frames(out, D) == [0, 2] and frames(out, L) == [0, 2] and topics(out)[-1] == E
    assert out[-1].merged == {"frames": {"denoised": 2, "llr": 2}, "missing": {"denoised": 3, "llr": 3}}
    assert buf.stats[("gaps", "denoised")] == 2 and buf.stats[("missing", "llr")] == 3  # 1, and 3-4


def test_the_first_number_is_learnt_per_stream_or_given() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf)
    out += buf.push_frame(D, "a", 11, 11, 0.0)  # a series numbered from 10: 11 came first
    out += buf.push_frame(D, "a", 10, 10, 0.1)
    assert frames(out) == []  # not 0: wait, maybe a lower number is on its way
    out += buf.poll(1.0)
    assert frames(out) == [10, 11] and buf.total("missing") == 0
    fixed = ReorderBuffer(window=100, gap_timeout_s=1.0, first_seq=0)
    out = started(fixed) + fixed.push_frame(D, "a", 1, 1, 0.0)
    out += fixed.poll(1.0)
    assert frames(out) == [1] and fixed.total("missing") == 1  # frame 0 is known to be missing


def test_several_acquisitions_are_merged_independently() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=1.0)
    out = started(buf, "a") + started(buf, "b")
    for q in (1, 0, 2):
        out += buf.push_frame(D, "a", q, q, 0.0)
        out += buf.push_frame(D, "b", 2 - q, 2 - q, 0.0)
        out += buf.push_frame(L, "b", q, q, 0.0)
    out += buf.push_series(E, "a", "end a", {"frames_expected": 3}, 0.1)
    assert frames(out, D, "a") == [0, 1, 2] and frames(out, D, "b") == [0, 1, 2]
    assert frames(out, L, "b") == [0, 1, 2]
    assert [r.acq for r in out if r.topic == E] == ["a"] and set(buf.acqs) == {"b"}


def test_flush_releases_everything_held() -> None:
    buf = ReorderBuffer(window=100, gap_timeout_s=10.0)
    out = started(buf) + buf.push_frame(D, "a", 0, 0, 0.0) + buf.push_frame(D, "a", 3, 3, 0.0)
    out += buf.flush(0.1)
    assert frames(out) == [0, 3] and buf.total("missing") == 2 and E not in topics(out)


# --- the service's message handling (sockets bound on loopback, no peers needed) ----------------------


def _frame(topic: bytes, acq: str, seq: int) -> list:
    return [
        bytes(p) for p in encode_frame(np.full((4, 3), seq, np.float32), acq, seq, 1.0 + seq, topic=topic)
    ]


def test_service_handles_bad_messages_and_rewrites_the_end(caplog: pytest.LogCaptureFixture) -> None:
    ctx = zmq.Context.instance()
    svc = MergeService(["tcp://127.0.0.1:1"], "tcp://127.0.0.1:*", gap_timeout_s=0.2, context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(svc.endpoint)
    seen = [-1]

    def arrived() -> int:
        while sub.poll(0):
            seen[0] = max(seen[0], int(decode(sub.recv_multipart()).header.meta["probe"]))
        return seen[0]

    try:  # PUB drops until the subscription arrives: probe it open (the test owns svc.pub, no loop runs)
        handshake(lambda i: svc.pub.send_multipart(encode_series(S, PROBE_ACQ, 0.0, {"probe": i})), arrived)
        with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
            for bad in ([b"junk"], [b"denoised", b"{", b""], [b"denoised", b"{", b""]):
                svc.handle(0, bad)
            svc.handle(0, _frame(b"frame", "a", 0))  # a raw frame is not a service's output
        assert sum("malformed" in r.getMessage() for r in caplog.records) == 3  # once per reason
        m = svc.metrics
        assert m.value("sbd_merge_malformed_total", {"reason": "bad_json"}) == 2
        assert m.value("sbd_merge_malformed_total", {"reason": "unexpected_topic"}) == 1
        svc.handle(0, encode_series(S, "a", 1.0, {"series": 3}))
        for q in (1, 0):
            svc.handle(0, _frame(D, "a", q))
        svc.handle(0, encode_series(E, "a", 2.0, {"end_reason": "series_end"}))
        svc.tick(time.monotonic() + 0.25)  # the end waits the gap timeout for other instances' stragglers
        got = []
        while sub.poll(1000):
            got.append(decode(sub.recv_multipart()))
            if got[-1].topic == E:
                break
        assert [g.topic for g in got] == [S, D, D, E]
        assert [g.header.seq for g in got[1:3]] == [0, 1]
        end = got[-1]
        assert isinstance(end, SeriesMessage) and end.header.n_frames == 2
        assert end.header.meta["end_reason"] == "series_end"
        assert end.header.meta["merge"] == {"frames": {"denoised": 2}, "missing": {"denoised": 0}}
        assert m.value("sbd_merge_frames_total", {"topic": "denoised"}) == 2
        assert m.value("sbd_merge_received_total", {"input": "0"}) == 8
    finally:
        sub.close(linger=0)
        svc.close()


def test_a_burst_of_series_starts_reaches_a_reading_subscriber_of_the_merge_whole() -> None:
    """The merge's output was a plain PUB with SNDHWM 64: a burst of more series messages than that
    (80 interleaved acquisitions starting at once) reached a subscriber reading all the time cut to the
    high-water mark, uncounted. It is an XPUB with NODROP now, as the service's publisher
    (sinks/xpub.py)."""
    ctx = zmq.Context.instance()
    svc = MergeService(["tcp://127.0.0.1:1"], "tcp://127.0.0.1:*", gap_timeout_s=0.2, context=ctx, sndhwm=4)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.connect(svc.endpoint)
    seen = [-1]

    def arrived() -> int:
        while sub.poll(0):
            msg = decode(sub.recv_multipart())
            if msg.header.acq == PROBE_ACQ:
                seen[0] = max(seen[0], int(msg.header.meta["probe"]))
        return seen[0]

    got: list[str] = []
    stop = threading.Event()

    def read() -> None:  # a subscriber that reads all the time
        while not stop.is_set():
            if sub.poll(50):
                msg = decode(sub.recv_multipart())
                if msg.header.acq != PROBE_ACQ:
                    got.append(msg.header.acq)

    reader = threading.Thread(target=read, daemon=True)
    try:
        handshake(lambda i: svc.pub.send_multipart(encode_series(S, PROBE_ACQ, 0.0, {"probe": i})), arrived)
        reader.start()
        for k in range(40):
            svc.handle(0, encode_series(S, f"acq{k}", 1.0, {}))
        assert wait_until(lambda: len(got) == 40, 30), len(got)
        assert sorted(got) == sorted(f"acq{k}" for k in range(40))
        assert svc.metrics.value("sbd_merge_send_dropped_total") == 0
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        sub.close(linger=0)
        svc.close()
