"""The ``acq`` id must be 1-256 *printable* characters, at the wire, on every topic and on encoding.

docs/wire-format.md: "``acq`` | string, 1-256 printable chars". The id names recording files and appears
in log lines: a newline or another control character in it would forge log lines and odd file names, so
``decode`` refuses it as ``bad_acq`` (and the encoders do not write it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbd_stream import protocol as p

FRAME = {"v": 1, "acq": "a1", "seq": 3, "ts": 1.5, "shape": [4, 5], "dtype": "uint16"}
PAYLOAD = bytes(40)
NOT_PRINTABLE = ["bad\u0001id", "a\nb", "tab\there", "del\x7f", "line\u2028sep", "\x00"]


def _decode(topic: bytes, header: dict, payload: bytes) -> p.Message:
    return p.decode([topic, json.dumps(header).encode(), payload])


@pytest.mark.parametrize("acq", NOT_PRINTABLE, ids=["soh", "newline", "tab", "del", "u2028", "nul"])
def test_an_acq_with_a_control_character_is_bad_acq_on_every_topic(acq: str) -> None:
    cases = [(b"frame", {**FRAME, "acq": acq}, PAYLOAD), (b"series_start", {"v": 1, "acq": acq}, b"")]
    cases.append((b"series_end", {"v": 1, "acq": acq, "ts": 2.0}, b""))
    for topic, header, payload in cases:
        with pytest.raises(p.ProtocolError) as ei:
            _decode(topic, header, payload)
        assert ei.value.reason == "bad_acq", topic
    with pytest.raises(p.ProtocolError):
        p.encode_frame(np.zeros((4, 5), np.uint16), acq, 0, 1.0)


@pytest.mark.parametrize("acq", ["a", "run 0042", "Pt-µ/ß_Ω", "x" * p.MAX_ACQ_LEN])
def test_printable_ids_up_to_the_limit_are_accepted(acq: str) -> None:
    msg = _decode(b"frame", {**FRAME, "acq": acq}, PAYLOAD)
    assert msg.header.acq == acq
    with pytest.raises(p.ProtocolError) as ei:
        _decode(b"frame", {**FRAME, "acq": acq + "x" * p.MAX_ACQ_LEN}, PAYLOAD)
    assert ei.value.reason == "bad_acq"
