"""A frame just over ``ingest.max_payload_bytes`` reaches the decoder and is counted ``too_large``.

docs/dectris.md: "A part over the socket's maximum message size (2 x ``ingest.max_payload_bytes`` + 1 MiB)
makes libzmq" refuse the peer; ``sources/receiver.py``: "parts just over the limit reach the decoder,
counted". A socket limit at ``max_payload_bytes`` itself would disconnect a sender for a frame one row too
big (and for a valid frame's compressed chunk), with no ``too_large`` count to say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from sbd_stream.config import IngestSettings
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame
from sbd_stream.sources.receiver import open_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MAX_PAYLOAD = 64 * 64 * 2


def _wait(pred: Callable[[], Any], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.02)
    return ok


def test_a_frame_one_row_too_big_is_counted_too_large_and_the_sender_stays_connected() -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    frames: list[Frame] = []
    settings = IngestSettings.model_validate(
        {"endpoint": f"tcp://127.0.0.1:{port}", "mode": "connect", "max_payload_bytes": MAX_PAYLOAD,
         "rcvhwm": 0, "input": {"dialect": "wire-v1"}}
    )  # fmt: skip
    ing = open_receiver(settings, Metrics(), frames.append)
    ing.start()
    m = ing.metrics
    try:
        small = np.zeros((8, 8), np.uint16)
        for seq in range(500):  # PUB drops what it sends before the subscription arrives
            pub.send_multipart(encode_frame(small, "probe", seq, 0.0))
            if _wait(lambda: frames, 0.05):
                break
        assert frames, "nothing received"
        pub.send_multipart(encode_frame(np.zeros((65, 64), np.uint16), "big", 0, 0.0))  # 128 bytes over
        for seq in range(3):
            pub.send_multipart(encode_frame(small, "after", seq, 0.0))
        assert _wait(lambda: len([f for f in frames if f.header.acq == "after"]) == 3)
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    assert m.value("sbd_frames_malformed_total", {"reason": "too_large"}) == 1
    assert m.value("sbd_frames_malformed_total", {"reason": "oversized"}) == 0
    assert m.value("sbd_input_disconnects_total", {"cause": "refused"}) == 0
    assert not [f for f in frames if f.header.acq == "big"]
