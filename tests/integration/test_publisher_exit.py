"""A process whose publisher still has large frames queued for a slow subscriber ends with status 0.

Frames are published without a copy; the publisher's socket lived on the never-ended shared context, so
``close(linger=1000)`` did not wait, the interpreter's teardown freed the frames under libzmq's I/O
thread and ``serve`` / ``replay --publish`` aborted ("Bad address (src/tcp.cpp:227)", status 134; audit
25 zerocopy: 2048^2 frames, a subscriber reading one a second). The publisher now owns its context and
ends it when it stops, which waits for what is queued (at most the 1 s linger) while it is alive."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import zmq
from conftest import free_port

pytestmark = pytest.mark.integration

PUBLISH = """
import sys, time
import numpy as np
from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_END, TOPIC_SERIES_START
from sbd_stream.sinks.publisher import OutputItem, Publisher

pub = Publisher(PublishSettings(endpoint=sys.argv[1]), Metrics(), "e")
pub.start()
time.sleep(1.0)  # the subscriber connects
pub.submit(OutputItem(TOPIC_SERIES_START, "big"))
for q in range(12):
    frame = np.random.default_rng(q).random((2048, 2048), dtype=np.float32)
    pub.submit(OutputItem(TOPIC_DENOISED, "big", q, time.time(), frame))
pub.submit(OutputItem(TOPIC_SERIES_END, "big", n_frames=12))
time.sleep(0.5)
pub.stop()
pub.join(10)
print("stopped", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_publisher_behind_a_slow_subscriber_ends_its_process_cleanly(tmp_path) -> None:
    ctx = zmq.Context()
    port = free_port(ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 65536)
    sub.connect(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISH, f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    got = 0
    try:
        end = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < end:
            if sub.poll(200):
                sub.recv_multipart()
                got += 1
                time.sleep(0.5)  # a subscriber slower than the publisher: frames stay queued there
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close(linger=0)
        ctx.term()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out and "Bad address" not in err
    assert got >= 1
