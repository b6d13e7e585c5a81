"""Wire format v1 header rules an independent (Node.js) client ran into: missing keys named as missing,
repeated keys refused, series messages without ``ts``, integers without a decimal point, and what
``meta.vacuum_counts`` of an ``llr`` header means (docs/wire-format.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from sbd_stream import protocol as p
from sbd_stream.llr_table import llr_columns

PAYLOAD = bytes(40)
FRAME = {"v": 1, "acq": "a1", "seq": 3, "ts": 1.5, "shape": [4, 5], "dtype": "uint16"}
WIRE_DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _reason(topic: bytes, header: bytes | str, payload: bytes = PAYLOAD) -> p.ProtocolError:
    raw = header.encode() if isinstance(header, str) else header
    with pytest.raises(p.ProtocolError) as ei:
        p.decode([topic, raw, payload])
    return ei.value


@pytest.mark.parametrize(
    ("key", "reason"),
    [("v", "bad_version"), ("acq", "bad_acq"), ("seq", "bad_seq"), ("ts", "bad_ts"), ("shape", "bad_shape"),
     ("dtype", "bad_dtype")],
)  # fmt: skip
def test_a_missing_required_key_is_named_as_missing_under_its_reason(key: str, reason: str) -> None:
    """It was logged as ``bad_seq: None``, as if the sender had written ``"seq": null``."""
    err = _reason(b"frame", json.dumps({k: v for k, v in FRAME.items() if k != key}))
    assert err.reason == reason
    assert str(err) == f'{reason}: no "{key}" key'
    null = _reason(b"frame", json.dumps({**FRAME, key: None}))  # present but null: its value, as before
    assert null.reason == reason and str(null) == f"{reason}: None"


def test_a_series_message_without_acq_names_the_key() -> None:
    err = _reason(b"series_start", '{"v":1,"ts":1.0}', b"")
    assert (err.reason, str(err)) == ("bad_acq", 'bad_acq: no "acq" key')


@pytest.mark.parametrize(
    "header",
    [
        '{"v":1,"acq":"a1","seq":-1,"seq":3,"ts":1.5,"shape":[4,5],"dtype":"uint16"}',  # was read as seq 3
        '{"v":1,"acq":"a1","seq":3,"ts":1.5,"shape":[4,5],"dtype":"uint16","dtype":"uint16"}',  # even equal
        '{"v":1,"acq":"a1","seq":3,"ts":1.5,"shape":[4,5],"dtype":"uint16","meta":{"x":1,"x":2}}',  # in meta
    ],
)
def test_repeated_keys_are_bad_json(header: str) -> None:
    err = _reason(b"frame", header)
    assert err.reason == "bad_json" and "duplicate key" in str(err)


def test_repeated_keys_in_a_series_message_are_bad_json() -> None:
    err = _reason(b"series_end", '{"v":1,"acq":"a","acq":"b","ts":1.0}', b"")
    assert (err.reason, str(err)) == ("bad_json", "bad_json: duplicate key 'acq'")


def test_equal_values_under_other_keys_are_not_repeated_keys() -> None:
    meta = {"a": 1, "b": 1, "nested": {"a": 1}, "list": [{"a": 1}, {"a": 2}]}
    msg = p.decode([b"frame", json.dumps({**FRAME, "meta": meta}).encode(), PAYLOAD])
    assert msg.header.meta == meta


@pytest.mark.parametrize(
    ("key", "reason"), [("seq", "bad_seq"), ("v", "bad_version"), ("shape", "bad_shape")]
)
def test_integers_are_written_without_a_decimal_point(key: str, reason: str) -> None:
    """``3.0`` is a float to JSON parsers that keep the difference; a client whose numbers are doubles
    (JavaScript, LabVIEW) must print integers as integers. Documented in docs/wire-format.md."""
    value = [4.0, 5] if key == "shape" else float(FRAME[key])  # type: ignore[arg-type]
    assert _reason(b"frame", json.dumps({**FRAME, key: value})).reason == reason


@pytest.mark.parametrize("topic", [b"series_start", b"series_end"])
def test_a_series_message_without_ts_takes_the_time_it_was_received(topic: bytes) -> None:
    """It was accepted and republished with ``"ts": 0.0`` (1 January 1970)."""
    before = time.time()
    msg = p.decode([topic, b'{"v":1,"acq":"nots"}', b""])
    assert isinstance(msg, p.SeriesMessage)
    assert before <= msg.header.ts <= time.time()
    assert json.loads(p.encode_series(topic, "nots", msg.header.ts)[1])["ts"] == msg.header.ts


@pytest.mark.parametrize("ts", ["null", '"now"', "1e308", "NaN"])
def test_a_series_ts_that_is_present_but_invalid_is_still_refused(ts: str) -> None:
    assert _reason(b"series_start", '{"v":1,"acq":"a","ts":' + ts + "}", b"").reason == "bad_ts"


def test_vacuum_counts_is_there_whenever_a_level_was_estimated_even_without_columns() -> None:
    """Flat vacuum frames: no column, yet the level scored against is useful (the doc said it was absent)."""
    meta, table = llr_columns(np.zeros((0, 4), np.float32), 0, 0.4512345)
    assert meta["n_columns"] == 0 and table == [] and meta["vacuum_counts"] == 0.451234
    small, _ = llr_columns(np.zeros((0, 4), np.float32), 0, 0.0)  # a frame too small to score: none
    assert "vacuum_counts" not in small
    text = " ".join(WIRE_DOC.read_text().split())
    assert "absent when no column was scored" not in text
    assert "absent for a frame too small to score" in text
    assert "for a blank frame its mean count, near 0" in text and "absent where exactly 0" in text
