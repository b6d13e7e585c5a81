"""A process whose publisher still has large frames queued for a slow subscriber ends with status 0.

Frames are published without a copy; the publisher's socket lived on the never-ended shared context, so
``close(linger=1000)`` did not wait, the interpreter's teardown freed the frames under libzmq's I/O
thread and ``serve`` / ``replay --publish`` aborted ("Bad address (src/tcp.cpp:227)", status 134; audit
25 zerocopy: 2048^2 frames, a subscriber reading one a second). The publisher now owns its context and
ends it when it stops, which waits for what is queued (at most the 1 s linger) while it is alive.

Readiness is a handshake, not a sleep: the child publishes probes until the subscriber has one (a fixed
1 s for the subscription to arrive let a loaded machine drop the whole series, and the test then saw
nothing and proved nothing)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import zmq
from conftest import PROBE_ACQ, free_port

from sbd_stream.protocol import decode

pytestmark = pytest.mark.integration

PUBLISH = """
import select, sys, time
import numpy as np
from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START
from sbd_stream.sinks.publisher import OutputItem, Publisher

PROBE_ACQ = sys.argv[2]  # given, not imported: the child loads no more of sbd_stream than the publisher

pub = Publisher(PublishSettings(endpoint=sys.argv[1]), Metrics(), "e")
pub.start()
end = time.monotonic() + 60
i = 0
while not select.select([sys.stdin], [], [], 0.05)[0]:  # probes until the subscriber says it has one
    if time.monotonic() > end:
        sys.exit("no go from the subscriber in 60 s")
    pub.submit(OutputItem(TOPIC_SERIES_START, PROBE_ACQ, meta={"probe": i}))
    i += 1
sys.stdin.readline()
pub.submit(OutputItem(TOPIC_SERIES_START, "big"))
for q in range(12):
    frame = np.random.default_rng(q).random((2048, 2048), dtype=np.float32)
    pub.submit(OutputItem(TOPIC_DENOISED, "big", q, time.time(), frame))
pub.submit(OutputItem(TOPIC_SERIES_END, "big", n_frames=12))
time.sleep(0.5)  # not a wait for anything: the stop comes while frames are still queued
pub.stop()
pub.join(10)
print("stopped", flush=True)
"""


def _acq(parts: list[bytes]) -> str:
    return decode(parts, max_payload=2048 * 2048 * 4).header.acq


@pytest.mark.timeout(180)
def test_a_publisher_behind_a_slow_subscriber_ends_its_process_cleanly(tmp_path) -> None:
    ctx = zmq.Context()
    port = free_port(ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 65536)
    sub.connect(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISH, f"tcp://127.0.0.1:{port}", PROBE_ACQ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdin is not None
    probed = False
    got = 0  # messages of the series "big": it went to a live subscriber, so frames were queued
    try:
        end = time.monotonic() + 60
        while not probed and proc.poll() is None and time.monotonic() < end:
            probed = sub.poll(200) and _acq(sub.recv_multipart()) == PROBE_ACQ
        if probed:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            end = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < end:
                if sub.poll(200) and _acq(sub.recv_multipart()) == "big":
                    got += 1
                    time.sleep(0.5)  # a subscriber slower than the publisher: frames stay queued there
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close(linger=0)
        ctx.term()
    assert probed, f"no probe reached the subscriber in 60 s: {err[-2000:]}"
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out and "Bad address" not in err
    assert got >= 1, "the subscriber saw nothing of the series once its subscription was open"
