"""What the merge's subscribers miss, and what its /metrics say about it (independent-client audit, 3 and 9).

Real ZeroMQ on loopback. libzmq's XPUB with ``ZMQ_XPUB_NODROP`` says EAGAIN for the first message that
meets a subscriber's full pipe; the merge then sent it the lossy way, which makes ZeroMQ set that pipe
aside until its reader has drained half of it, and every message sent meanwhile skipped it *without an
error*. The audit's subscriber missed 18 ``llr`` of a burst the merge released after a missing frame's
``--window``, and ``sbd_merge_send_dropped_total`` said 1. The merge now keeps a message that meets a full
pipe and retries it while it goes on reading its inputs (merge/outbox.py), so a subscriber that reads
gets the whole burst.

Its labelled counters were absent from /metrics until their first event; every known label value is now
exported at 0 from the start, as the service's are (an ``increase()`` alert sees the first event).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, free_port, handshake, wait_until
from helpers_procs import kill_if_running

from sbd_stream.merge import MergeService
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_SERIES_START,
    FrameMessage,
    SeriesMessage,
    decode,
    encode_frame,
    encode_series,
)

pytestmark = pytest.mark.integration

WINDOW = 16
N = WINDOW + 10  # frames sent; frame LOST never is
LOST = 3
SHAPE = (512, 512)  # 1 MB float32 frames: a burst of them overruns the pipe and the loopback buffers


def _sub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A subscriber with a small pipe and a small kernel buffer that reads only when told."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 4)
    s.setsockopt(zmq.RCVBUF, 64 * 1024)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


def _probe_seen(sock: zmq.Socket, seen: list[int]) -> int:
    while sock.poll(0):
        msg = decode(sock.recv_multipart())
        if isinstance(msg, SeriesMessage) and msg.header.acq == PROBE_ACQ:
            seen[0] = max(seen[0], int(msg.header.meta["probe"]))
    return seen[0]


@pytest.mark.timeout(180)
def test_a_burst_released_after_a_missing_frame_reaches_a_subscriber_that_reads() -> None:
    """Frame 3 of one instance never comes: the merge holds 4.. until ``--window`` and then releases them
    at once, 1 MB each, to a subscriber that has not read yet (its pipe, 4 messages, and its socket
    buffers are full). Before: the first frame that met the full pipe was counted, the next ones
    skipped the subscriber silently (it missed most of the burst, ``send_dropped`` 1). Now every frame
    but 3 reaches it once it reads, in order, and nothing is counted as dropped."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)  # the instance
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("tcp://127.0.0.1:*")
    merge: MergeService | None = None
    sub: zmq.Socket | None = None
    try:
        merge = MergeService(
            [pub.getsockopt_string(zmq.LAST_ENDPOINT)], "tcp://127.0.0.1:*", window=WINDOW,
            gap_timeout_s=600.0, sndhwm=4, context=ctx, pace_s=600.0,
        )  # fmt: skip  # pace_s: the reader below starts whenever the machine lets it, never too late
        sub = _sub(ctx, merge.endpoint)
        seen_in, seen_out = [-1], [-1]
        handshake(
            lambda i: pub.send_multipart(encode_series(TOPIC_SERIES_START, PROBE_ACQ, 0.0, {"probe": i})),
            lambda: _probe_seen(merge.subs[0], seen_in),
        )
        assert merge.pub is not None
        out = merge.pub
        handshake(
            lambda i: out.send_multipart(encode_series(TOPIC_SERIES_START, PROBE_ACQ, 0.0, {"probe": i})),
            lambda: _probe_seen(sub, seen_out),
        )
        merge.start()
        pub.send_multipart(encode_series(TOPIC_SERIES_START, "x", 100.0, {}))
        data = np.zeros(SHAPE, np.float32)
        for seq in range(N):
            if seq != LOST:
                data[0, 0] = seq
                pub.send_multipart(encode_frame(data, "x", seq, 100.0 + seq, topic=TOPIC_DENOISED))
        m = merge.metrics
        assert wait_until(lambda: m.value("sbd_merge_frames_total", {"topic": "denoised"}) == N - 1, 120)
        assert m.value("sbd_merge_frames_missing_total", {"topic": "denoised"}) == 1
        assert len(merge.outbox) > 0  # the burst met the full pipe and waits (else this test shows nothing)
        got: list[int] = []  # the subscriber reads only now: the whole burst was released meanwhile
        while len(got) < N - 1 and sub.poll(30_000):  # 30 s of silence: nothing more is coming
            msg = decode(sub.recv_multipart())
            if isinstance(msg, FrameMessage) and msg.header.acq == "x":
                got.append(msg.header.seq)
        missed = sorted(set(range(N)) - set(got) - {LOST})
        dropped = m.value("sbd_merge_send_dropped_total")
        assert got == [s for s in range(N) if s != LOST], f"missed {missed}, send_dropped {dropped}"
        assert m.value("sbd_merge_send_dropped_total") == 0
    finally:
        if merge is not None:
            merge.stop()
            merge.join(10)
            merge.close()  # the sockets of one never started
        if sub is not None:
            sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()


def _scrape(port: int) -> dict[str, float] | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    lines = [ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#")]
    return {name: float(value) for name, value in lines}


@pytest.mark.timeout(120)
def test_a_fresh_merge_exports_its_labelled_counters_at_zero() -> None:
    """A real ``sbd-stream merge`` that has received nothing: before, its /metrics had no
    ``sbd_merge_series_total``, ``sbd_merge_series_dropped_total``, ``sbd_merge_restarts_total`` or
    ``sbd_merge_malformed_total`` series at all (the audit's mm.json), so the first event showed no
    increase."""
    in_port, out_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "sbd_stream", "merge", "--input", f"tcp://127.0.0.1:{in_port}",
        "--output", f"tcp://127.0.0.1:{out_port}", "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert wait_until(lambda: _scrape(metrics_port) is not None, 90), "no /metrics"
        samples = _scrape(metrics_port)
        assert samples is not None
        expected = [
            *(f'sbd_merge_series_total{{topic="{t}"}}' for t in ("series_start", "series_end")),
            *(f'sbd_merge_series_dropped_total{{topic="{t}"}}' for t in ("series_start", "series_end")),
            *(f'sbd_merge_restarts_total{{topic="{t}"}}' for t in ("denoised", "llr", "series_start")),
            *(f'sbd_merge_malformed_total{{reason="{r}"}}' for r in ("bad_json", "bad_seq", "bad_topic")),
            'sbd_merge_malformed_total{reason="unexpected_topic"}',
        ]
        missing = [name for name in expected if name not in samples]
        assert not missing, missing
        assert all(samples[name] == 0 for name in expected)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc, timeout=10)
    assert proc.returncode == 0, err[-2000:]
