"""Frames without their ``series_start`` are logged once per acquisition, also past 64 acquisitions.

Audit h30 (independent wire clients): docs/wire-format.md says frames arriving without their
``series_start`` "are logged once per acquisition". The wire-v1 plug-in remembered the 64 acquisitions
most recently *added*, so with 80 acquisitions sent round-robin (the docs' own example of many active
acquisitions) every frame found its acquisition forgotten and wrote the line again: 240 INFO lines for 80
acquisitions x 3 frames, one per frame at the detector's rate. Now the known acquisitions are kept as long as
the sequence accounting remembers them, least recently active forgotten first.
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
from sbd_stream.protocol import encode_frame
from sbd_stream.sources.receiver import open_receiver

pytestmark = pytest.mark.integration

ACQS, ROUNDS = 80, 3
LINE = "arrive without its series_start"


@pytest.mark.timeout(60)
def test_eighty_acquisitions_round_robin_log_their_missing_start_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    got: list[Frame] = []
    ing = open_receiver(
        IngestSettings(endpoint="tcp://127.0.0.1:*", mode=SocketMode.bind, rcvhwm=0), m, got.append, None
    )
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # with RCVHWM 0 below, nothing sent after the subscription is dropped
    pub.connect(ing.endpoint)
    arr = np.zeros((4, 4), np.uint16)
    with caplog.at_level(logging.INFO, logger="sbd_stream.sources.wire_v1"):
        ing.start()
        try:
            # a PUB drops until the subscription arrived: probe until a frame gets through
            assert wait_until(lambda: (pub.send_multipart(encode_frame(arr, "probe", 0, 0.0)), got)[1], 20)
            for r in range(ROUNDS):
                for i in range(ACQS):
                    pub.send_multipart(encode_frame(arr, f"rr-{i:02d}", r, float(r)))
            assert wait_until(lambda: sum(f.header.acq != "probe" for f in got) == ACQS * ROUNDS, 30)
        finally:
            ing.stop()
            ing.join(5)
            pub.close(0)
            ctx.term()
    lines = [r.getMessage() for r in caplog.records if LINE in r.getMessage() and "rr-" in r.getMessage()]
    assert len(lines) == ACQS, f"{len(lines)} lines for {ACQS} acquisitions: {lines[ACQS : ACQS + 2]}"
    assert m.value("sbd_frames_missing_total") == 0  # each one's numbering continued (sources/sequence.py)
