"""`sbd-stream emulate` behind a slow receiver: it ends with status 0 once what it queued is sent.

Frames go out without a copy; the command used to return while large frames were still queued, the
interpreter's teardown freed them under libzmq's I/O thread and the process aborted ("Bad address
(src/tcp.cpp:227)", status 134), the receiver missing the last frames and the ``series_end`` (2048^2
frames read at 0.3 s each: 10 of 12 messages, 2 of 2 runs; audit 25)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from sbd_stream.protocol import TOPIC_SERIES_END

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_a_slow_receiver_gets_every_frame_and_the_series_end(tmp_path) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 30_000)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    topics: list[bytes] = []

    def read_slowly() -> None:
        try:
            while True:
                parts = sub.recv_multipart()
                topics.append(bytes(parts[0]))
                if parts[0] == TOPIC_SERIES_END:
                    return
                time.sleep(0.3)  # slower than the sender: frames queue up in the emulator
        except zmq.Again:
            return

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    cmd = [sys.executable, "-m", "sbd_stream", "emulate", "--endpoint", f"tcp://127.0.0.1:{port}",
           "--connect", "--shape", "2048x2048", "--frames", "10", "--rate", "0", "--pool", "2",
           "--wait", "10", "--acq", "slow"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=100, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    reader.join(60)
    sub.close(linger=0)
    ctx.term()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert topics[-1] == TOPIC_SERIES_END and len(topics) == 12, topics
