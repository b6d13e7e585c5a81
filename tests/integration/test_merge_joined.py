"""The merge joining a series mid-way: counted, logged once per acquisition, in the JSON summary.

The audit ran docs/scale-out-nodes.md's example as written (emulator first, merge last): the instances
published ``series_start`` and the first frames before the merge's subscriptions reached them, the merge
learnt the first number from what came, and its summary said ``missing 0``: nothing showed the loss.
Real ZeroMQ on loopback: fake instance publishers (XPUB, to see the merge subscribe), the merge (the
`sbd-stream merge` command, and the in-process service), a subscriber on the merged stream.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, handshake, stop_command, wait_until
from test_merge_service_restart import Merged  # two instance PUBs -> a running merge -> a Collector
from test_multinode import _free_port  # a loopback TCP port nobody holds now

from sbd_stream.merge.service import status_line
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START, decode, encode_frame
from sbd_stream.protocol import encode_series as series

pytestmark = pytest.mark.integration

D, S, E = TOPIC_DENOISED, TOPIC_SERIES_START, TOPIC_SERIES_END
JOINED = "joined it mid-series"


def frame(acq: str, q: int) -> list[bytes]:
    return encode_frame(np.full((4, 3), q, np.float32), acq, q, 1.0 + q / 100, topic=D)


@pytest.mark.timeout(90)
def test_merge_command_started_after_the_series_reports_it_joined_mid_series() -> None:
    """Start and frames 0-2 published before the merge existed (a PUB drops them): the command's log says
    so once, naming the frames, and its JSON summary counts it; a whole series is not counted."""
    ctx = zmq.Context.instance()
    pubs = []
    for _ in range(2):
        s = ctx.socket(zmq.XPUB)  # a PUB that sees the merge's subscription arrive
        s.setsockopt(zmq.LINGER, 0)
        s.bind("tcp://127.0.0.1:*")
        pubs.append(s)
    pubs[0].send_multipart(series(S, "late", 1.0, {}))  # nobody subscribed yet: dropped, as in the audit
    for q in range(3):
        pubs[q % 2].send_multipart(frame("late", q))
    out_ep = f"tcp://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "sbd_stream", "merge", "--gap-timeout", "0.5", "--output", out_ep]
    for s in pubs:
        cmd += ["--input", s.getsockopt_string(zmq.LAST_ENDPOINT)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(out_ep)
    got: list = []
    log_lines: list[str] = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = ""
        while "merging" not in line:  # the command says where it is once its sockets are up
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"merge exited early: {proc.returncode}"
        reader = threading.Thread(target=lambda: log_lines.extend(proc.stderr), daemon=True)
        reader.start()
        for s in pubs:  # each input's subscription has reached its publisher
            assert s.poll(20_000), "merge never subscribed to an input"
            s.recv_multipart()
        seen = [-1]

        def arrived() -> int:
            while sub.poll(0):
                m = decode(sub.recv_multipart())
                seen[0] = max(seen[0], int(m.header.meta["probe"]))
            return seen[0]

        handshake(lambda i: pubs[0].send_multipart(series(S, f"{PROBE_ACQ}-{i}", 1.0, {"probe": i})), arrived)
        for q in range(3, 10):  # the rest of "late": the merge joins it here
            pubs[q % 2].send_multipart(frame("late", q))
        pubs[1].send_multipart(series(E, "late", 2.0, {}))
        pubs[0].send_multipart(series(S, "whole", 3.0, {}))  # a series the merge saw from its start
        for q in range(4):
            pubs[q % 2].send_multipart(frame("whole", q))
        pubs[0].send_multipart(series(E, "whole", 4.0, {}))
        ends = 0
        while ends < 2 and sub.poll(10_000):
            msg = decode(sub.recv_multipart())
            got.append((msg.header.acq, msg.topic, getattr(msg.header, "seq", -1)))
            ends += msg.topic == E
    finally:
        stdout = stop_command(proc)
        sub.close(linger=0)
        for s in pubs:
            s.close(linger=0)
    late = [(t, q) for a, t, q in got if a == "late"]
    assert late == [(D, q) for q in range(3, 10)] + [(E, -1)]  # no start to forward; the rest in order
    assert [t for a, t, _ in got if a == "whole"] == [S, D, D, D, D, E]
    assert proc.returncode == 0
    summary = json.loads(stdout)
    assert summary["joined_midseries"] == 1  # "late" only
    assert summary["missing"] == 0  # the merge's semantics kept: the first number is learnt
    said = [ln for ln in log_lines if JOINED in ln]
    assert len(said) == 1, log_lines
    assert (
        "no series_start for late" in said[0] and "at seq 3, series_start and frames 0-2 not seen" in said[0]
    )


@pytest.mark.timeout(60)
def test_merge_service_counts_each_series_without_a_start_once(caplog: pytest.LogCaptureFixture) -> None:
    """In-process: frames without a start (after the gap timeout), an end before any start, and frames
    still waiting for their start when the merge stops: each acquisition counted and logged once."""
    m = Merged(gap_timeout_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
            for q in range(5, 9):
                m.pubs[q % 2].send_multipart(frame("a", q))
            assert wait_until(lambda: m.got("a") == [("denoised", q) for q in range(5, 9)], 10), m.got("a")
            for q in range(5, 9):  # more of "a": already joined, not counted again
                m.pubs[q % 2].send_multipart(frame("a", q + 4))
            m.pubs[0].send_multipart(series(E, "b", 1.0, {}))  # an end, no start, no frame yet
            m.pubs[0].send_multipart(frame("b", 0))  # same publisher: after the end
            assert wait_until(lambda: ("denoised", 0) in m.got("b"), 10), m.got("b")
            m.pubs[0].send_multipart(frame("c", 2))  # held for its start when the merge stops
            assert wait_until(lambda: m.merge.buffer.buffered >= 1 and len(m.got("a")) == 8, 10)
            assert m.merge.metrics.value("sbd_merge_joined_midseries_total") == 2
            assert "joined 2" in status_line(m.merge, 1.0)
        m.merge.stop()  # releases what it holds: "c" goes without its start
        m.merge.join(5.0)
        assert wait_until(lambda: m.got("c") == [("denoised", 2)], 10), m.got("c")
    finally:
        m.close()
    assert m.merge.summary(1.0)["joined_midseries"] == 3
    said = [r.getMessage() for r in caplog.records if JOINED in r.getMessage()]
    assert len(said) == 3, said
    assert (
        "no series_start for a within 0.5 s: joined it mid-series at seq 5, series_start and frames 0-4"
        in said[0]
    )
    assert "no series_start for b before its series_end: joined it mid-series before any frame" in said[1]
    assert "no series_start for c before the merge flushed it" in said[2]
    assert m.merge.metrics.value("sbd_merge_gaps_total", {"topic": "denoised"}) == 0
