"""A frame numbered far beyond its acquisition's last is a numbering, not 2^62 frames lost (real ZeroMQ).

Audit h30 (independent wire clients): ``seq`` may be anything from 0 to 2^63 - 1. One acquisition whose
first frame was numbered 2^63 - 2 (a sender stamping a counter of its own) added 9.2e18 to
``sbd_frames_missing_total``, a float: every later gap of every acquisition (+1, +2 ...) then vanished in
its rounding, so the counter the docs tell subscribers to reconcile their gaps with stopped moving for the
rest of the run, and the log said "9223372036854775806 frames before it were not received". A jump of more
than ``sources.sequence.MAX_GAP`` (2^32) is now a restart with nothing missing, logged once per acquisition.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import MAX_SEQ, encode_frame
from sbd_stream.sources.receiver import open_receiver

pytestmark = pytest.mark.integration

SENT = [
    ("h", MAX_SEQ - 1), ("h", MAX_SEQ),  # its own numbering from the start: nothing lost
    ("g", 0), ("g", 1), ("g", 3),  # frame 2 lost: the one missing frame of the run
    ("g", 4 + 2**40),  # a jump: the sender renumbered, nothing lost
    ("g", 5 + 2**40),
]  # fmt: skip


@pytest.mark.timeout(60)
def test_huge_seq_jumps_leave_the_missing_frames_counter_exact(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    got: list[Frame] = []
    ing = open_receiver(
        IngestSettings(endpoint="tcp://127.0.0.1:*", mode=SocketMode.bind, rcvhwm=0), m, got.append
    )
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.connect(ing.endpoint)
    arr = np.zeros((4, 4), np.uint16)
    with caplog.at_level(logging.INFO, logger="sbd_stream.sources.sequence"):
        ing.start()
        try:
            assert wait_until(lambda: (pub.send_multipart(encode_frame(arr, "probe", 0, 0.0)), got)[1], 20)
            base = (m.value("sbd_frames_missing_total"), m.value("sbd_sequence_restarts_total"))
            for i, (acq, seq) in enumerate(SENT):
                pub.send_multipart(encode_frame(arr, acq, seq, float(i)))
            assert wait_until(lambda: sum(f.header.acq != "probe" for f in got) == len(SENT), 20)
        finally:
            ing.stop()
            ing.join(5)
            pub.close(0)
            ctx.term()
    assert m.value("sbd_frames_missing_total") - base[0] == 1  # frame 2 of g, exactly
    assert m.value("sbd_sequence_gaps_total") == 1
    # h and g each start beside another acquisition; g's jump is a restart too (a new recording part)
    assert m.value("sbd_sequence_restarts_total") - base[1] == 3
    jumped = [f for f in got if f.header.seq == 4 + 2**40]
    assert len(jumped) == 1 and jumped[0].seq_restart
    assert "9223372036854775806 frames before it" not in caplog.text
    assert caplog.text.count("taken as the sender's own numbering") == 2  # once for h, once for g
