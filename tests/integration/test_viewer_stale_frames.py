"""The viewer says when the frame it shows is no longer current, and when it is blank (audit h33).

Why: when frames stopped (detector stopped, beam off at the gun, service gone) the page kept showing the
last frame with its small receipt latency ("shown frame latency 40 ms") and nothing said it was not the
specimen now; `/api/status` had only `age_s`, which the page never read. A blank frame (no beam: the
service publishes zeros and ``meta.blank``) was a black panel with no word why. Real PUB socket, real
HTTP, and (slow) the real page in headless Chromium.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers_browser import headless_chromium, needs_chromium

from sbd_stream.config import ViewerSettings
from sbd_stream.protocol import TOPIC_DENOISED, encode_frame
from sbd_stream.sinks.viewer.frameinfo import STALE_MIN_S
from sbd_stream.sinks.viewer.server import Viewer

pytestmark = [pytest.mark.integration]

DATA = np.random.default_rng(0).random((64, 64), np.float32)


@pytest.fixture
def fed() -> Iterator[tuple[Viewer, zmq.Socket]]:
    """A stand-alone viewer on a real PUB socket of denoised frames."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    out = f"tcp://127.0.0.1:{port}"
    viewer = Viewer(ViewerSettings(enabled=True, port=0), output_endpoint=out, context=ctx)
    viewer.start()
    try:
        yield viewer, pub
    finally:
        viewer.close()
        pub.close(0)


def _status(viewer: Viewer) -> dict[str, Any]:
    with urllib.request.urlopen(viewer.url + "api/status", timeout=10) as r:
        return json.load(r)


def _send_until_shown(viewer: Viewer, pub: zmq.Socket, acq: str, n: int, **kw: Any) -> dict[str, Any]:
    """Frames 0..n-1 at 20 Hz (exposure 0.05 s), resent until the viewer holds the last one."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        for seq in range(n):
            msg = encode_frame(DATA, acq, seq, time.time(), topic=TOPIC_DENOISED, exposure_s=0.05, **kw)
            pub.send_multipart(msg)
            time.sleep(0.05)
        d = _status(viewer)["frames"]["denoised"]
        if d is not None and d["acq"] == acq and d["seq"] == n - 1:
            return d
    raise AssertionError("the viewer never showed the frames sent")


def test_status_and_image_say_when_no_newer_frame_came(fed: tuple[Viewer, zmq.Socket]) -> None:
    viewer, pub = fed
    d = _send_until_shown(viewer, pub, "live", 10)
    assert d["stale"] is False and d["blank"] is False  # no such keys before: the page could not tell
    assert d["stale_after_s"] == STALE_MIN_S  # 5 frames of 0.05 s are less than the floor
    end = time.monotonic() + 60  # the frames stopped: the same frame becomes stale, then says so
    while time.monotonic() < end and not (d := _status(viewer)["frames"]["denoised"])["stale"]:
        time.sleep(0.2)
    assert d["stale"] is True and d["age_s"] > d["stale_after_s"], d
    with urllib.request.urlopen(viewer.url + "image/denoised.png", timeout=10) as r:
        assert r.headers["X-Seq"] == "9"
        assert float(r.headers["X-Age"]) > STALE_MIN_S  # the image's own age, beside its X-Latency
        assert float(r.headers["X-Latency"]) < float(r.headers["X-Age"])
        assert r.headers["X-Blank"] is None
    _send_until_shown(viewer, pub, "live", 3)  # a new series of frames: current again
    assert _status(viewer)["frames"]["denoised"]["stale"] is False


def test_a_blank_frame_is_marked_blank(fed: tuple[Viewer, zmq.Socket]) -> None:
    viewer, pub = fed
    d = _send_until_shown(viewer, pub, "dark", 4, meta={"blank": True})
    assert d["blank"] is True
    with urllib.request.urlopen(viewer.url + "image/denoised.png", timeout=10) as r:
        assert r.headers["X-Blank"] == "1"


@pytest.mark.slow
@pytest.mark.timeout(180)
@needs_chromium
def test_the_page_says_the_frame_shown_is_not_current(tmp_path: Path, fed: tuple[Viewer, zmq.Socket]) -> None:
    viewer, pub = fed
    with headless_chromium(tmp_path) as driver:
        driver.get(viewer.url)
        text = lambda i: driver.find_element("id", i).text  # noqa: E731
        _send_until_shown(viewer, pub, "live", 10)
        assert text("stale") == ""
        end = time.monotonic() + 60
        while time.monotonic() < end and not text("stale"):
            time.sleep(0.2)
        assert "no new denoised frame for" in text("stale") and "not the specimen now" in text("stale")
        _send_until_shown(viewer, pub, "dark", 4, meta={"blank": True})
        end = time.monotonic() + 30
        while time.monotonic() < end and "blank frame" not in text("cap-denoised"):
            time.sleep(0.2)
        assert "blank frame: no beam" in text("cap-denoised")
        assert text("stale") == ""  # frames came again
