"""A producer's ``meta`` key named like one the service sets arrives renamed ``meta.<key>`` (real ZeroMQ).

Audit h30 (independent wire clients): a bridge's frame with ``"meta": {"blank": true, "hot_pixels": 5}``
(a beam blanker's state, a detector's own count) came out of the service, on a frame with beam and no
pixel replaced, as ``denoised`` / ``llr`` with ``meta.blank = true`` and ``meta.hot_pixels = 5``: by
docs/wire-format.md the service's word that the frame had no beam and that 5 hot pixels were replaced
(the service adds these keys only when they apply, so it never overwrote the producer's). The wire-v1
edge now renames such keys, keeping their values, so every output's ``blank``, ``hot_pixels``,
``n_columns``... is the service's.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.frames import RESERVED_META, Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame
from sbd_stream.sinks.publisher import SERVICE_META_KEYS
from sbd_stream.sources.receiver import open_receiver

pytestmark = pytest.mark.integration


def test_the_renamed_keys_are_the_ones_the_publisher_keeps_as_the_services() -> None:
    assert SERVICE_META_KEYS | {"meta_dropped"} == RESERVED_META


@pytest.mark.timeout(60)
def test_producer_meta_keys_named_like_the_services_are_renamed_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    got: list[Frame] = []
    ing = open_receiver(IngestSettings(endpoint="tcp://127.0.0.1:*", mode=SocketMode.bind), m, got.append)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.connect(ing.endpoint)
    arr = np.zeros((4, 4), np.uint16)
    own = {"blank": True, "hot_pixels": 5, "meta.blank": "mine", "meta_dropped": "x", "detector": "K2"}
    with caplog.at_level(logging.INFO, logger="sbd_stream.sources.dialect"):
        ing.start()
        try:
            assert wait_until(lambda: (pub.send_multipart(encode_frame(arr, "probe", 0, 0.0)), got)[1], 20)
            for seq in range(2):
                pub.send_multipart(encode_frame(arr, "a", seq, float(seq), meta=own))
            assert wait_until(lambda: sum(f.header.acq == "a" for f in got) == 2, 20)
        finally:
            ing.stop()
            ing.join(5)
            pub.close(0)
            ctx.term()
    frames = [f for f in got if f.header.acq == "a"]
    for f in frames:
        assert f.header.meta == {
            "meta.blank": "mine",  # the producer's own "meta.blank" keeps its name ...
            "meta.meta.blank": True,  # ... so its "blank" moves one further
            "meta.hot_pixels": 5,
            "meta.meta_dropped": "x",
            "detector": "K2",
        }
        assert SERVICE_META_KEYS.isdisjoint(f.header.meta)
    lines = [r.getMessage() for r in caplog.records if "passed on as meta.<key>" in r.getMessage()]
    assert len(lines) == 1 and "blank, hot_pixels, meta_dropped" in lines[0]  # once, not per frame
