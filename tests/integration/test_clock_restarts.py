"""A bridge restart re-using its acquisition id after its clock was corrected (audit "clocks", defect 2).

Real ZeroMQ on loopback. Series 1 is stamped 3 h ahead (the bridge's clock), then an NTP step puts the
clock right and the bridge restarts numbering from 0. The rule was "a number seen before with a ``ts``
later than every frame so far is a restart", so the new series, stamped *earlier*, was (a) dropped as
duplicates on one instance, (b) appended to the old series' part as late frames on an instance sharing
a PUSH stream, and (c) dropped as duplicates by ``merge``, its ``series_start`` too. Each case runs with
the clock corrected backwards and, as the control, with a clock 3 h behind corrected forwards.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from conftest import wait_until
from test_merge_service_restart import E, Merged, S

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame, encode_series
from sbd_stream.sources.receiver import Receiver, open_receiver

pytestmark = pytest.mark.integration

OFFSETS = pytest.mark.parametrize("offset", [10800.0, -10800.0], ids=["clock-stepped-back", "control"])
ARR = np.zeros((8, 8), np.uint16)


def _receiver(
    endpoint: str, socket_type: str, got: list[Frame], ctx: zmq.Context
) -> tuple[Receiver, Metrics]:
    m = Metrics()
    inp = {"dialect": "wire-v1", "socket_type": socket_type}
    settings = IngestSettings.model_validate({"endpoint": endpoint, "mode": SocketMode.connect, "input": inp})
    ing = open_receiver(settings, m, got.append, None, ctx)
    ing.start()
    return ing, m


def _counts(m: Metrics) -> dict[str, float]:
    names = ("restarts", "duplicate", "out_of_order")
    full = ("sbd_sequence_restarts_total", "sbd_frames_duplicate_total", "sbd_frames_out_of_order_total")
    return {k: m.value(n) for k, n in zip(names, full, strict=True)}


@pytest.mark.timeout(60)
@OFFSETS
def test_one_instance_sees_the_restart_whatever_the_clock_did(offset: float) -> None:
    """(a): frames 0-19 stamped ``now + offset``; the restarted bridge's odd frames 1-19 (seq 0 and the new
    series_start went to another instance), stamped ``now``. Were 10 duplicates, neither recorded nor
    denoised."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got: list[Frame] = []
    ing, m = _receiver(f"tcp://127.0.0.1:{port}", "sub", got, ctx)
    try:
        assert pub.poll(20_000), "the receiver never subscribed"
        pub.recv_multipart()
        now = time.time()
        pub.send_multipart(encode_series(S, "ntp", now + offset))
        for q in range(20):
            pub.send_multipart(encode_frame(ARR, "ntp", q, now + offset + 0.05 * q))
        for q in range(1, 20, 2):
            pub.send_multipart(encode_frame(ARR, "ntp", q, now + 2.0 + 0.05 * q))
        assert wait_until(lambda: len(got) == 30, 20), len(got)
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    restarts = [(f.header.seq, f.seq_restart) for f in got if f.seq_restart]
    assert restarts == [(1, True)] and got[20].header.seq == 1  # the new series' first frame: a new part
    assert _counts(m) == {"restarts": 1.0, "duplicate": 0.0, "out_of_order": 0.0}


@pytest.mark.timeout(60)
@OFFSETS
def test_instances_sharing_a_push_stream_each_see_the_restart(offset: float) -> None:
    """(b): a PUSH bridge shared by two PULL instances; series 1 (start, 0-39) at ``now + offset``, then
    a crash and a restart without a series_start (optional), 0-39 at ``now``. One instance took its
    share of the new series as late frames and appended it to the old series' part."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    got: list[list[Frame]] = [[], []]
    ings = [_receiver(f"tcp://127.0.0.1:{port}", "pull", g, ctx) for g in got]
    try:
        for _ in range(2):  # both connected: the PUSH deals the frames out between them
            assert monitor.poll(20_000), "an instance never connected"
            monitor.recv_multipart()
        now = time.time()
        push.send_multipart(encode_series(S, "qntp", now + offset))
        for q in range(40):
            push.send_multipart(encode_frame(ARR, "qntp", q, now + offset + 0.05 * q))
        for q in range(40):
            push.send_multipart(encode_frame(ARR, "qntp", q, now + 3.0 + 0.05 * q))
        assert wait_until(lambda: len(got[0]) + len(got[1]) == 80, 20)
    finally:
        for ing, _m in ings:
            ing.stop()
            ing.join(5)
        push.disable_monitor()
        monitor.close(0)
        push.close(0)
    for frames, (_ing, m) in zip(got, ings, strict=True):
        new = [i for i, f in enumerate(frames) if now + 3.0 <= f.header.ts < now + 6.0]
        assert new and new == list(range(new[0], len(frames)))  # the new series came after the old one
        assert [i for i, f in enumerate(frames) if f.seq_restart] == [new[0]]  # its first frame: a new part
        assert _counts(m) == {"restarts": 1.0, "duplicate": 0.0, "out_of_order": 0.0}


@pytest.mark.timeout(60)
@OFFSETS
def test_the_merge_takes_a_series_start_with_an_earlier_ts_as_a_restart(offset: float) -> None:
    """(c): two instances' outputs into a running merge; series 1 (start, 0-19) at ``now + offset``, then a
    new series_start and 0-19 at ``now``. The merge sent only 20 frames: the second start and 14 frames
    were dropped as duplicates."""
    m = Merged()
    now = time.time()
    try:
        m.series(0, S, "mntp", now + offset)
        for q in range(20):
            m.frame(q % 2, "mntp", q, now + offset + 0.02 * (q + 1))
        assert wait_until(lambda: m.got("mntp").count(("denoised", 19)) == 1, 10), m.got("mntp")
        m.series(0, S, "mntp", now)
        for q in range(20):
            time.sleep(0.02)  # a bridge's pace: messages of two instances do not overtake each other
            m.frame(q % 2, "mntp", q, now + 0.02 * (q + 1))
        time.sleep(0.02)
        m.series(1, E, "mntp", now + 1.0)
        assert wait_until(lambda: m.got("mntp").count(("series_end", -1)) == 2, 10), m.got("mntp")
    finally:
        m.close()
    frames = [("denoised", q) for q in range(20)]
    start, end = ("series_start", -1), ("series_end", -1)
    assert m.got("mntp") == [start, *frames, end, start, *frames, end]
    ms = m.merge.metrics
    assert ms.total("sbd_merge_restarts_total") == 1
    assert ms.total("sbd_merge_duplicates_total") == 0 and ms.total("sbd_merge_late_total") == 0
