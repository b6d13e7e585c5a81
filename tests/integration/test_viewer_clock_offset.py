"""The viewer page names a sender's clock offset as such (audit "clocks", defect 7).

A frame's ``ts`` is the sender's clock and the viewer's latency is its receipt on this machine's: with
the sender's clock 3 h ahead the page showed a latency of "-10799990" ms. A stand-alone viewer in
headless Chromium, fed by a real PUB with denoised frames stamped 3 h ahead, now shows "clock offset"
and says which clock is ahead, by how much.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_browser import headless_chromium, needs_chromium

from sbd_stream.config import ViewerSettings
from sbd_stream.protocol import TOPIC_DENOISED, encode_frame
from sbd_stream.sinks.viewer.server import Viewer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
@needs_chromium
def test_a_sender_clock_ahead_is_shown_as_a_clock_offset_not_a_negative_latency(tmp_path: Path) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    viewer = Viewer(
        ViewerSettings(enabled=True, port=0), output_endpoint=f"tcp://127.0.0.1:{port}", context=ctx
    )
    viewer.start()
    data = np.random.default_rng(0).random((64, 64), np.float32)
    try:
        with headless_chromium(tmp_path) as driver:
            driver.get(viewer.url)
            text = lambda i: driver.find_element("id", i).text  # noqa: E731
            end, seq = time.monotonic() + 120, 0
            while time.monotonic() < end and text("m-live") != "clock offset":
                ahead = time.time() + 10800.0  # the sender's clock, 3 h ahead of this machine's
                pub.send_multipart(encode_frame(data, "ahead", seq, ahead, topic=TOPIC_DENOISED))
                seq += 1
                time.sleep(0.1)
            assert text("m-live") == "clock offset", text("m-live")
            lane = text("f-lane")
            assert "clock offset, not a latency" in lane and "~3.0 h ahead" in lane, lane
            assert "ahead" in driver.find_element("id", "m-live").get_attribute("title")
            assert "-10" not in text("m-live") + lane + text("m-shown")  # no negative milliseconds anywhere
    finally:
        viewer.close()
        pub.close(0)
