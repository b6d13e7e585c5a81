"""Stream v2 times that are malformed are refused, as docs/dectris.md says and v1 does.

Until session 28 ``_rational_s`` took a negative, non-integer or zero-denominator ``start_time`` /
``real_time`` as absent: the frame went on with ``ts`` 0.0 and ``exposure_s`` 0.0, counted nowhere
(mutation round h28, dectris report)."""

from __future__ import annotations

import cbor2
import pytest

from sbd_stream.protocol import ProtocolError
from sbd_stream.sources.dectris.messages import decode_stream_v2

BAD = [[-5, 1000], [1, 0], [5, -1000], "x", [1.5, 2], [1, 2, 3]]


def _image(**times: object) -> bytes:
    img = {
        "type": "image",
        "series_id": 1,
        "image_id": 0,
        "data": {"t": cbor2.CBORTag(40, [[1, 2], cbor2.CBORTag(64, b"ab")])},
    }
    img.update(times)
    return cbor2.dumps(img)


@pytest.mark.parametrize("t", BAD, ids=str)
def test_a_malformed_start_time_is_bad_ts(t: object) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_stream_v2([_image(start_time=t, real_time=[25, 1000])])
    assert e.value.reason == "bad_ts"


@pytest.mark.parametrize("t", BAD, ids=str)
def test_a_malformed_real_time_is_bad_exposure(t: object) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_stream_v2([_image(start_time=[5, 1000], real_time=t)])
    assert e.value.reason == "bad_exposure"


def test_well_formed_and_absent_times_are_taken() -> None:
    (m,) = decode_stream_v2([_image(start_time=[5, 1000], real_time=[25, 1000])])
    assert m.header.ts == pytest.approx(0.005) and m.header.exposure_s == pytest.approx(0.025)
    (m,) = decode_stream_v2([_image()])  # both optional
    assert m.header.ts == 0.0 and m.header.exposure_s == 0.0
