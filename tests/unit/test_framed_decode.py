"""The bounds-checked decoder of HDF5-framed bslz4 / lz4 chunks (formats/framed_decode.py): the HDF5
filters' output byte for byte on valid chunks, and one ProtocolError, never a crash, on damaged ones.

Why: a fuzzed DECTRIS payload killed the CI's test process with SIGSEGV inside the HDF5 filter's read
(the filters decompress with LZ4's unchecked decoder): any peer could crash the service with one frame.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbd_stream.formats import dectris_codec as codec
from sbd_stream.formats.framed_decode import decode_framed
from sbd_stream.protocol import ProtocolError


@pytest.mark.parametrize("algo", ["bslz4", "lz4"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("n", [1, 7, 8, 100, 1000, 4096 + 5, 70001])
def test_valid_chunks_decode_as_the_hdf5_filter_does(algo: str, dtype: str, n: int) -> None:
    a = np.random.default_rng(n).poisson(3.0, n).astype(dtype)
    blob = codec.compress_framed(a, algo, backend="hdf5plugin")  # written by the HDF5 filter itself
    ref = codec._h5codec().decode(blob, algo, a.itemsize if algo == "bslz4" else 1, a.nbytes)
    out = decode_framed(blob, algo, a.itemsize, a.nbytes)
    assert out.tobytes() == ref.tobytes() == a.tobytes()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_chunks_are_one_protocol_error(data: st.DataObject) -> None:
    a = np.random.default_rng(0).poisson(3.0, 5000).astype("uint16")
    algo = data.draw(st.sampled_from(["bslz4", "lz4"]))
    blob = bytearray(codec.compress_framed(a, algo, backend="hdf5plugin"))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(12, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(12, len(blob)))
    try:
        out = codec.decompress_framed(bytes(blob[:cut]), algo, 2, a.nbytes, backend="hdf5plugin")
    except ProtocolError as e:
        assert e.reason in ("decompress_failed", "bad_blob")
    else:
        assert out.nbytes == a.nbytes
