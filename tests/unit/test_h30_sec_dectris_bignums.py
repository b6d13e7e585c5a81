"""A DECTRIS stream v2 image whose sides or element size are CBOR bignums is a counted reason.

Audit h30 (security), on a live ``serve --dialect dectris-stream-v2``: ``[[10**6000, 2], ...]`` as
the tag-40 dimensions, or ``10**6000`` as the bslz4 element size, raised ``ValueError`` while the
refusal's text was formatted (Python prints no int past 4300 digits): the receiver logged a
traceback per message ("set aside") instead of counting it under its reason. Real CBOR bytes.
"""

from __future__ import annotations

import cbor2
import pytest

from sbd_stream.protocol import ProtocolError
from sbd_stream.sources.dectris.messages import SELF_DESCRIBED_CBOR, decode_stream_v2

BIG = 10**6000


def _image(dims: list[int], typed: cbor2.CBORTag) -> bytes:
    msg = {
        "type": "image",
        "series_id": 1,
        "series_unique_id": "u",
        "image_id": 0,
        "start_time": [0, 1000],
        "real_time": [25, 1000],
        "data": {"threshold_1": cbor2.CBORTag(40, [dims, typed])},
    }
    return SELF_DESCRIBED_CBOR + cbor2.dumps(msg)


@pytest.mark.parametrize("dims", [[BIG, 2], [2, BIG], [-BIG, 2]])
def test_a_bignum_side_is_bad_shape(dims: list[int]) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_stream_v2([_image(dims, cbor2.CBORTag(69, b"\0\0\0\0"))])
    assert e.value.reason == "bad_shape"


def test_a_bignum_element_size_is_bad_compression() -> None:
    typed = cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", BIG, b"\0" * 16]))
    with pytest.raises(ProtocolError) as e:
        decode_stream_v2([_image([1, 1], typed)])
    assert e.value.reason == "bad_compression"
