"""A JSON header nests at most ``protocol.MAX_JSON_DEPTH`` (64) levels, whoever decodes it (fuzz defect 7).

Python's JSON parser recurses, so the deepest header accepted depended on the stack in use: ~985 levels
in the reference decoder ``protocol.decode``, fewer on the service's receive thread, which refused such a
``meta`` as ``bad_json``. Now one documented limit, with the same reason for the wire format, the service's
receiver and DECTRIS stream v1's JSON parts, at the limit accepted and one past it refused.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream import protocol as p
from sbd_stream.config import IngestSettings, InputSocket, SocketMode, WireV1Input
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.sources.dectris import sim
from sbd_stream.sources.dectris.messages import CONFIG_DEPTH, StreamV1Decoder
from sbd_stream.sources.receiver import open_receiver

pytestmark = pytest.mark.integration

LIMIT = p.MAX_JSON_DEPTH


def nested(levels: int, kind: str = "dict") -> Any:
    """A JSON value ``levels`` deep (``{}`` / ``[]`` is one level)."""
    v: Any = {} if kind == "dict" else []
    for _ in range(levels - 1):
        v = {"a": v} if kind == "dict" else [v]
    return v


def frame_parts(depth: int, kind: str = "dict", seq: int = 0) -> list[bytes]:
    """A valid 8 x 8 uint8 frame whose header (level 1) nests ``depth`` levels through its ``meta``."""
    header = {"v": 1, "acq": "deep", "seq": seq, "ts": time.time(), "shape": [8, 8], "dtype": "uint8"}
    header["meta"] = nested(depth - 1, "dict") if kind == "dict" else {"a": nested(depth - 2, "list")}
    return [b"frame", json.dumps(header).encode(), bytes(64)]


def test_the_documented_limit_is_64_levels() -> None:
    assert LIMIT == 64


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_the_reference_decoder_takes_the_limit_and_refuses_one_past(kind: str) -> None:
    msg = p.decode(frame_parts(LIMIT, kind))
    assert isinstance(msg, p.FrameMessage) and msg.header.acq == "deep"
    for depth in (LIMIT + 1, 500):  # 500: far below Python's recursion limit, refused by the rule alone
        with pytest.raises(p.ProtocolError) as e:
            p.decode(frame_parts(depth, kind))
        assert e.value.reason == "bad_json" and f"nested deeper than {LIMIT} levels" in str(e.value)


def test_series_messages_follow_the_same_rule() -> None:
    ok = {"v": 1, "acq": "deep", "ts": 1.0, "meta": nested(LIMIT - 1)}
    assert p.decode([b"series_start", json.dumps(ok).encode(), b""]).header.acq == "deep"
    over = {**ok, "meta": nested(LIMIT)}
    with pytest.raises(p.ProtocolError, match="nested deeper"):
        p.decode([b"series_start", json.dumps(over).encode(), b""])


def test_what_the_encoder_writes_at_the_limit_decodes() -> None:
    parts = p.encode_frame(np.zeros((8, 8), np.uint8), "deep", 0, 1.0, meta=nested(LIMIT - 1))
    assert p.decode(parts).header.meta == nested(LIMIT - 1)


@pytest.mark.timeout(60)
def test_the_service_receiver_takes_the_limit_and_refuses_one_past_as_bad_json() -> None:
    """On its own receive thread, over a real socket: the same answer as the reference decoder."""
    ctx = zmq.Context()
    m = Metrics()
    got: list[Frame] = []
    settings = IngestSettings(
        endpoint="tcp://127.0.0.1:*", mode=SocketMode.bind, input=WireV1Input(socket_type=InputSocket.pull)
    )
    rec = open_receiver(settings, m, got.append, context=ctx)
    push = ctx.socket(zmq.PUSH)
    push.connect(rec.endpoint)
    rec.start()
    try:
        for seq, (depth, kind) in enumerate(
            [(LIMIT, "dict"), (LIMIT + 1, "dict"), (LIMIT, "list"), (LIMIT + 1, "list"), (900, "dict")]
        ):
            push.send_multipart(frame_parts(depth, kind, seq))
        push.send_multipart([b"frame", b"not json", b""])  # sentinel: counted after everything before it
        bad = lambda: m.value("sbd_frames_malformed_total", {"reason": "bad_json"})  # noqa: E731
        assert wait_until(lambda: bad() == 4), bad()
        assert [f.header.seq for f in got] == [0, 2]
        assert m.value("sbd_frames_received_total") == 2
        assert m.value("sbd_frames_malformed_total", {"reason": "internal_error"}) == 0
    finally:
        rec.stop()
        rec.join(5)
        push.close(0)
        ctx.term()


def _dimage_d(parts: list[bytes], depth: int) -> list[bytes]:
    d = json.loads(parts[1])
    d["extra"] = nested(depth - 1)
    return [parts[0], json.dumps(d).encode(), *parts[2:]]


def test_dectris_v1_json_parts_take_the_limit_and_refuse_one_past() -> None:
    arr = np.zeros((8, 8), np.uint16)
    dec = StreamV1Decoder()
    (start,) = dec.decode(
        sim.v1_header(3, {**sim.v1_detector_config((8, 8), "uint16", 2), "x": nested(CONFIG_DEPTH - 1)})
    )
    # the configuration is the series_start's meta.config: the service's own header stays within the limit
    parts = p.encode_series(p.TOPIC_SERIES_START, start.header.acq, 0.0, start.header.meta)
    assert p.decode(parts).header.meta["config"]["x"] == nested(CONFIG_DEPTH - 1)
    (frame,) = dec.decode(_dimage_d(sim.v1_frame(arr, 3, 0, "raw"), LIMIT))
    assert frame.header.seq == 0
    with pytest.raises(p.ProtocolError) as e:
        dec.decode(_dimage_d(sim.v1_frame(arr, 3, 1, "raw"), LIMIT + 1))
    assert e.value.reason == "bad_json" and "nested deeper" in str(e.value)
    over = {**sim.v1_detector_config((8, 8), "uint16", 2), "x": nested(CONFIG_DEPTH)}
    with pytest.raises(p.ProtocolError) as e:
        StreamV1Decoder().decode(sim.v1_header(4, over))
    assert e.value.reason == "bad_json" and f"config: nested deeper than {CONFIG_DEPTH}" in str(e.value)


def test_a_dectris_configuration_sent_alone_too_deep_leaves_its_header_waiting() -> None:
    """As a configuration that does not parse: refused, and the series starts without it."""
    dec = StreamV1Decoder()
    header, config = sim.v1_header(
        5, {**sim.v1_detector_config((8, 8), "uint16", 1), "x": nested(CONFIG_DEPTH)}
    )
    assert dec.decode([header]) == []
    with pytest.raises(p.ProtocolError) as e:
        dec.decode([config])
    assert e.value.reason == "bad_json"
    (start,) = dec.flush()
    assert start.topic == p.TOPIC_SERIES_START and "config" not in start.header.meta
