"""Wire format v1: round trips, every rejection reason, and property-based fuzzing of the decoder."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbd_stream import protocol as p


def _hdr(**kw) -> bytes:
    base = {"v": 1, "acq": "a1", "seq": 3, "ts": 1.5, "shape": [4, 5], "dtype": "uint16", "exposure_s": 0.025}
    base.update(kw)
    base = {k: v for k, v in base.items() if v is not _DEL}
    return json.dumps(base).encode()


_DEL = object()


def _ser(**kw) -> bytes:
    return json.dumps({"v": 1, "acq": "s", "ts": 0.0, **kw}).encode()


@pytest.mark.parametrize("dtype", list(p.DTYPES))
def test_frame_round_trip_every_dtype(dtype: str) -> None:
    arr = (np.arange(20).reshape(4, 5) % 7).astype(dtype)
    parts = p.encode_frame(arr, "acq-7", 42, 123.25, exposure_s=0.025, meta={"mag": 1e6})
    msg = p.decode(parts)
    assert isinstance(msg, p.FrameMessage)
    assert msg.header.acq == "acq-7" and msg.header.seq == 42 and msg.header.ts == 123.25
    assert msg.header.dtype == dtype and msg.header.shape == (4, 5)
    assert msg.header.meta == {"mag": 1e6}
    np.testing.assert_array_equal(msg.data, arr)


def test_output_topics_carry_engine_and_columns() -> None:
    arr = np.ones((3, 3), np.float32)
    cols = [[1.0, 2.0, 3.5]]
    msg = p.decode(p.encode_frame(arr, "a", 0, 0.0, topic=p.TOPIC_LLR, engine="e1", columns=cols))
    assert msg.topic == p.TOPIC_LLR and msg.header.engine == "e1" and msg.header.columns == cols


def test_decode_is_zero_copy_view() -> None:
    buf = bytearray(np.arange(20, dtype="<u2").tobytes())
    msg = p.decode([b"frame", _hdr(), buf])
    assert isinstance(msg, p.FrameMessage)
    buf[0] = 99
    assert msg.data[0, 0] == 99  # shares memory with the received buffer


def test_series_round_trip() -> None:
    msg = p.decode(p.encode_series(p.TOPIC_SERIES_START, "a", 2.0, {"k": 1}, n_frames=10))
    assert isinstance(msg, p.SeriesMessage)
    assert msg.header.acq == "a" and msg.header.n_frames == 10 and msg.header.meta == {"k": 1}


def test_series_announcements_are_kept_when_valid() -> None:
    msg = p.decode([b"series_start", _ser(shape=[64, 32], dtype="uint16", exposure_s=0.025), b""])
    assert isinstance(msg, p.SeriesMessage)
    assert msg.header.shape == (64, 32) and msg.header.dtype == "uint16" and msg.header.exposure_s == 0.025
    assert p.decode([b"series_start", json.dumps(msg.header.to_json()).encode(), b""]) == msg


def test_finite_json_walks_deep_values_without_recursion() -> None:
    deep: object = 1.0
    for _ in range(5000):
        deep = [deep]
    assert p.finite_json({"d": deep})
    assert not p.finite_json({"d": [[{"x": [float("inf")]}]]})


GOOD_PAYLOAD = bytes(40)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"frame", _hdr()], "bad_parts"),
        ([b"nope", _hdr(), GOOD_PAYLOAD], "bad_topic"),
        ([b"frame", b"{not json", GOOD_PAYLOAD], "bad_json"),
        ([b"frame", b"\xff\xfe", GOOD_PAYLOAD], "bad_json"),
        ([b"frame", b"[1,2]", GOOD_PAYLOAD], "bad_json"),
        ([b"frame", _hdr(v=2), GOOD_PAYLOAD], "bad_version"),
        ([b"frame", _hdr(v=True), GOOD_PAYLOAD], "bad_version"),
        ([b"frame", _hdr(acq=""), GOOD_PAYLOAD], "bad_acq"),
        ([b"frame", _hdr(acq=5), GOOD_PAYLOAD], "bad_acq"),
        ([b"frame", _hdr(seq=-1), GOOD_PAYLOAD], "bad_seq"),
        ([b"frame", _hdr(seq=1.5), GOOD_PAYLOAD], "bad_seq"),
        ([b"frame", _hdr(seq=_DEL), GOOD_PAYLOAD], "bad_seq"),
        ([b"frame", _hdr(ts="now"), GOOD_PAYLOAD], "bad_ts"),
        # a number, but no date: the recording could state neither its start nor its time axis
        ([b"frame", _hdr(ts=1e308), GOOD_PAYLOAD], "bad_ts"),
        ([b"frame", _hdr(ts=-1e308), GOOD_PAYLOAD], "bad_ts"),
        ([b"frame", _hdr(ts=p.TS_MAX + 1), GOOD_PAYLOAD], "bad_ts"),
        ([b"frame", _hdr(ts=1.7e18), GOOD_PAYLOAD], "bad_ts"),  # nanoseconds sent as seconds
        ([b"series_start", _ser(ts=1e308), b""], "bad_ts"),
        ([b"frame", _hdr(shape=[4]), GOOD_PAYLOAD], "bad_shape"),
        ([b"frame", _hdr(shape=[0, 5]), b""], "bad_shape"),
        ([b"frame", _hdr(shape=[100000, 100000]), GOOD_PAYLOAD], "bad_shape"),
        ([b"frame", _hdr(shape=[16384, 16384], dtype="float32"), GOOD_PAYLOAD], "too_large"),
        ([b"frame", _hdr(dtype="float64"), GOOD_PAYLOAD], "bad_dtype"),
        ([b"frame", _hdr(dtype=">u2"), GOOD_PAYLOAD], "bad_dtype"),
        ([b"frame", _hdr(exposure_s=-1), GOOD_PAYLOAD], "bad_exposure"),
        ([b"frame", _hdr(meta=[1]), GOOD_PAYLOAD], "bad_meta"),
        # meta follows the header's no-NaN / no-Infinity rule (the publisher once died on it)
        ([b"frame", _hdr(meta={"x": float("nan")}), GOOD_PAYLOAD], "bad_meta"),
        ([b"frame", _hdr(meta={"a": [1, {"b": float("-inf")}]}), GOOD_PAYLOAD], "bad_meta"),
        ([b"frame", _hdr()[:-1] + b',"meta":{"v":1e400}}', GOOD_PAYLOAD], "bad_meta"),
        # series fields are validated like a frame's, not accepted and ignored
        ([b"series_start", _ser(shape=[0, 4]), b""], "bad_shape"),
        ([b"series_start", _ser(shape="64x64"), b""], "bad_shape"),
        ([b"series_start", _ser(dtype="complex64"), b""], "bad_dtype"),
        ([b"series_start", _ser(exposure_s=-1), b""], "bad_exposure"),
        ([b"series_start", _ser(exposure_s=float("inf")), b""], "bad_exposure"),
        ([b"series_start", _ser(meta={"m": float("nan")}), b""], "bad_meta"),
        ([b"series_end", _ser(n_frames=-1), b""], "bad_n_frames"),
        ([b"frame", _hdr(extra=1), GOOD_PAYLOAD], "unknown_field"),
        # output-only keys on an input frame: refused, not accepted and then overwritten or dropped
        ([b"frame", _hdr(engine="mine"), GOOD_PAYLOAD], "unknown_field"),
        ([b"frame", _hdr(columns=[]), GOOD_PAYLOAD], "unknown_field"),
        ([b"denoised", _hdr(columns=[]), GOOD_PAYLOAD], "unknown_field"),  # columns: llr only
        # a NaN / Infinity literal is refused under its field's own reason (json.loads parses it)
        ([b"frame", _hdr(ts=float("nan")), GOOD_PAYLOAD], "bad_ts"),
        ([b"frame", _hdr(seq=float("inf")), GOOD_PAYLOAD], "bad_seq"),
        ([b"frame", _hdr(exposure_s=float("-inf")), GOOD_PAYLOAD], "bad_exposure"),
        ([b"frame", _hdr(seq=2**63), GOOD_PAYLOAD], "bad_seq"),  # 0 <= seq < 2^63
        ([b"frame", _hdr(), GOOD_PAYLOAD[:-1]], "bad_length"),
        ([b"frame", _hdr(), GOOD_PAYLOAD + b"x"], "bad_length"),
        ([b"frame", b" " * (p.MAX_HEADER_BYTES + 1), GOOD_PAYLOAD], "header_too_large"),
        ([b"series_end", json.dumps({"v": 1, "acq": "a", "ts": 0}).encode(), b"x"], "bad_length"),
    ],
)
def test_rejections(parts: list, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as ei:
        p.decode(parts)
    assert ei.value.reason == reason


@pytest.mark.parametrize("ts", [0, 0.0, -1.5, -1e9, 1.7e9, p.TS_MIN, p.TS_MAX])
def test_every_ts_naming_a_date_is_accepted_as_sent(ts: float) -> None:
    msg = p.decode([b"frame", _hdr(ts=ts), GOOD_PAYLOAD])
    assert msg.header.ts == ts
    assert p.decode(p.encode_frame(np.zeros((4, 5), np.uint16), "a", 0, ts)).header.ts == ts
    assert p.decode([b"series_start", _ser(ts=ts), b""]).header.ts == ts


def test_max_payload_is_configurable() -> None:
    parts = p.encode_frame(np.zeros((10, 10), np.uint8), "a", 0, 0.0)
    p.decode(parts, max_payload=100)
    with pytest.raises(p.ProtocolError, match="too_large"):
        p.decode(parts, max_payload=99)


def test_encode_refuses_unsupported() -> None:
    with pytest.raises(ValueError):
        p.encode_frame(np.zeros((2, 2), np.float64), "a", 0, 0.0)
    with pytest.raises(ValueError):
        p.encode_frame(np.zeros((2, 2, 2), np.uint8), "a", 0, 0.0)
    with pytest.raises(ValueError):
        p.encode_frame(np.zeros((2, 2), np.uint8), "a", 0, 0.0, topic=b"series_end")
    with pytest.raises(ValueError, match="outputs"):  # what decode refuses as unknown_field
        p.encode_frame(np.zeros((2, 2), np.uint8), "a", 0, 0.0, engine="e1")
    with pytest.raises(ValueError, match="llr"):
        p.encode_frame(np.zeros((2, 2), np.float32), "a", 0, 0.0, topic=p.TOPIC_DENOISED, columns=[])


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from([b"frame", b"denoised", b"llr", b"series_start", b"series_end", b"x"]),
    fields=st.dictionaries(
        st.sampled_from(["v", "acq", "seq", "ts", "shape", "dtype", "exposure_s", "meta", "n_frames", "z"]),
        _json_values,
    ),
    payload=st.binary(max_size=256),
)
def test_fuzz_structured_headers_never_crash(topic: bytes, fields: dict, payload: bytes) -> None:
    try:
        hdr = json.dumps(fields).encode()
    except ValueError:
        return
    try:
        msg = p.decode([topic, hdr, payload], max_payload=4096)
    except p.ProtocolError:
        return
    if isinstance(msg, p.FrameMessage):
        assert msg.data.nbytes == len(payload) == msg.header.nbytes
        assert msg.data.shape == msg.header.shape


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(max_size=128), min_size=0, max_size=5))
def test_fuzz_random_bytes_never_crash(parts: list[bytes]) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(parts)


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 32),
    w=st.integers(1, 32),
    dtype=st.sampled_from(list(p.DTYPES)),
    seq=st.integers(0, 2**63 - 1),
    acq=st.text(min_size=1, max_size=20).filter(str.isprintable),
    data=st.data(),
)
def test_fuzz_round_trip(h: int, w: int, dtype: str, seq: int, acq: str, data) -> None:
    raw = data.draw(st.binary(min_size=h * w * p.DTYPES[dtype].itemsize, max_size=h * w * 4))
    arr = np.frombuffer(raw[: h * w * p.DTYPES[dtype].itemsize], dtype=p.DTYPES[dtype]).reshape(h, w)
    msg = p.decode(p.encode_frame(arr, acq, seq, 1.0))
    assert msg.header.seq == seq and msg.header.acq == acq
    assert msg.data.tobytes() == arr.tobytes()
