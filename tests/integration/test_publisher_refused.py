"""An output ZeroMQ refuses (out of descriptors) is counted and logged once, not a traceback per frame.

At ``ulimit -n 32`` ``serve`` published 5 frames, then pyzmq could not open the socket its zero-copy
sends use ("Too many open files") and the supervisor logged an ERROR with a full traceback for each of
the next 54 frames. In a child process here (its descriptors used up on purpose), as in that run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # real sockets, a real descriptor limit

SCRIPT = """
import logging, os, resource, sys
import numpy as np
from zmq.utils.garbage import gc
from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.publisher import OutputItem, Publisher

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
m = Metrics()
pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
gc.start()  # pyzmq's zero-copy bookkeeping thread, running as in a service
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
frame = np.zeros((256, 256), np.float32)
sent = [pub.send(OutputItem(b"denoised", "a", seq, 0.0, frame)) for seq in range(5)]
for fd in held:
    os.close(fd)
print(sent, m.value("sbd_publish_dropped_total", {"topic": "denoised"}))
pub.release_unstarted()
"""


@pytest.mark.timeout(120)
def test_frames_zeromq_refuses_are_counted_and_logged_once() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["[False,", "False,", "False,", "False,", "False]", "5.0"], r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "denoised 0 of a NOT sent: Too many open files" in errors[0] and "open-file limit" in errors[0]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
