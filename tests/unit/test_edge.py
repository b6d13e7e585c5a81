"""Rules applied where data enters or leaves the machine: non-finite pixels, non-loopback binds."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq

from sbd_stream.config import PublishSettings
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.security import is_loopback, warn_if_exposed
from sbd_stream.service.edge import (
    NONFINITE_KEY,
    SATURATED_KEY,
    negative_pixels,
    replace_invalid,
    replace_nonfinite,
    replaced,
)
from sbd_stream.sinks.publisher import Publisher


def _frame(data: np.ndarray) -> Frame:
    return Frame(FrameHeader("a", 3, 0.0, data.shape, data.dtype.name, meta={"k": 1}), data)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nonfinite_pixels_are_replaced_by_the_finite_mean_counted_and_flagged(dtype: str) -> None:
    raw = np.array([[1.0, 2.0, np.nan], [3.0, np.inf, -np.inf]], dtype)
    m = Metrics()
    f = replace_nonfinite(_frame(raw), m)
    assert f.data.dtype == raw.dtype and np.isfinite(f.data).all()
    np.testing.assert_array_equal(f.data, np.array([[1, 2, 2], [3, 2, 2]], dtype))
    assert f.header.meta == {"k": 1, NONFINITE_KEY: 3}
    assert np.isnan(raw[0, 2])  # the received frame (what is recorded) is untouched
    assert m.value("sbd_frames_nonfinite_total") == 1 and m.value("sbd_pixels_nonfinite_total") == 3


def test_all_nonfinite_becomes_zero_and_finite_or_integer_frames_pass_as_they_are() -> None:
    f = replace_nonfinite(_frame(np.full((2, 2), np.nan, np.float32)))
    np.testing.assert_array_equal(f.data, np.zeros((2, 2), np.float32))
    for data in (np.ones((2, 2), np.float32), np.ones((2, 2), np.uint16), np.full((2, 2), -7, np.int32)):
        frame = _frame(data)
        assert replace_nonfinite(frame) is frame


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_pixels_at_the_unsigned_maximum_are_replaced_counted_and_flagged(dtype: str) -> None:
    """DECTRIS marks defective / gap pixels 2^bits - 1: no count; one of them spoiled a 60 px disc."""
    top = np.iinfo(dtype).max
    raw = np.array([[0, 1, top], [2, top, 1]], dtype)
    m = Metrics()
    f = replace_invalid(_frame(raw), m)
    assert f.data.dtype == raw.dtype  # the queue, header and batch stage keep the frame's dtype
    np.testing.assert_array_equal(f.data, np.array([[0, 1, 1], [2, 1, 1]], dtype))  # mean 1.0
    assert f.header.meta == {"k": 1, SATURATED_KEY: 2} and replaced(f) == 2
    assert raw[0, 2] == top  # the received frame (what is recorded) is untouched
    assert m.value("sbd_frames_saturated_total") == 1 and m.value("sbd_pixels_saturated_total") == 2
    assert m.value("sbd_frames_nonfinite_total") == 0


def test_a_frame_below_the_maximum_passes_untouched_and_negative_pixels_are_counted() -> None:
    frame = _frame(np.full((3, 3), 254, np.uint8))
    assert replace_invalid(frame) is frame and replaced(frame) == 0
    assert negative_pixels(np.array([[-1, 0], [2, -3]], np.int32)) == 2
    assert negative_pixels(np.array([[np.nan, -0.5]], np.float32)) == 1
    assert negative_pixels(np.zeros((2, 2), np.uint16)) == 0


def test_minus_infinity_is_a_non_finite_pixel_not_also_a_negative_count() -> None:
    """-Inf is replaced and counted as non-finite; it was also counted as negative, with the
    "dark-subtracted or gain-corrected?" warning (API audit h30)."""
    frames = np.array([[[-np.inf, 0.5], [-0.25, np.inf]]], np.float32)
    assert negative_pixels(frames) == 1
    assert negative_pixels(frames.astype(np.float64)) == 1
    assert negative_pixels(np.array([[-np.inf]], np.float16)) == 0


@pytest.mark.parametrize(
    ("where", "loopback"),
    [
        ("tcp://127.0.0.1:5556", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://localhost:5556", True),
        ("tcp://[::1]:5556", True),
        ("ipc:///tmp/sbd", True),
        ("127.0.0.1", True),
        ("tcp://*:5556", False),
        ("tcp://0.0.0.0:5556", False),
        ("tcp://eth0:5556", False),
        ("tcp://10.1.2.3:5556", False),
        ("0.0.0.0", False),
        ("", False),
    ],
)
def test_loopback_or_not(where: str, loopback: bool) -> None:
    assert is_loopback(where) is loopback


def test_binding_beyond_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sbd_stream.security"):
        assert warn_if_exposed("viewer page", "0.0.0.0")
        assert not warn_if_exposed("metrics endpoint", "127.0.0.1")
        ctx = zmq.Context.instance()
        for endpoint in ("tcp://127.0.0.1:*", "tcp://*:*"):  # `serve --output tcp://*:P`
            pub = Publisher(PublishSettings(endpoint=endpoint), Metrics(), "e", ctx)
            pub.sock.close(0)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2
    assert "viewer page binds 0.0.0.0" in warned[0] and "publisher binds tcp://*:*" in warned[1]


@pytest.mark.parametrize(("ts", "accepted"), [(0.0, True), (-1.5, True), (1e308, False), (-1e308, False)])
def test_a_ts_naming_no_date_is_refused_at_the_edge_for_every_dialect(ts: float, accepted: bool) -> None:
    """The Emitter every dialect goes through: a DECTRIS clock can't hand the recorder 1e308 either."""
    from sbd_stream.protocol import SeriesHeader, SeriesMessage
    from sbd_stream.sources.dialect import Emitter

    m, frames, series = Metrics(), [], []
    emit = Emitter(m, frames.append, series.append)
    data = np.zeros((2, 2), np.uint16)
    emit.frame(Frame(FrameHeader("a", 0, ts, (2, 2), "uint16"), data))
    emit.series(SeriesMessage(b"series_start", SeriesHeader("a", ts)))
    assert (len(frames), len(series)) == ((1, 1) if accepted else (0, 0))
    assert m.value("sbd_frames_malformed_total", {"reason": "bad_ts"}) == (0 if accepted else 2)
