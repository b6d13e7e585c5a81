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


def _h5_chunk(a: np.ndarray, comp: dict) -> tuple[bytes, np.ndarray]:
    """(the chunk the HDF5 filter wrote, h5py's read of it) for a one-chunk dataset."""
    import io

    import h5py

    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=a, chunks=a.shape, **comp)
        return ds.id.read_direct_chunk((0,))[1], ds[:]


def _mixed(n: int, dtype: str) -> np.ndarray:
    """Compressible runs and random runs, so that some LZ4 blocks are stored raw, some compressed."""
    rng = np.random.default_rng(n)
    a = rng.poisson(0.4, n).astype(dtype)
    for s in range(0, n, 3 * 700):
        a[s : s + 700] = rng.integers(0, np.iinfo(dtype).max, min(700, n - s), dtype=dtype, endpoint=True)
    return a


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("comp", ["lz4-1000", "bslz4-512"])
def test_many_blocks_some_stored_raw_decode_as_h5py_reads(dtype: str, comp: str) -> None:
    """The block loop (decoded into one buffer, H5Z-LZ4 blocks stored raw where LZ4 did not shrink
    them, the last block short) gives h5py's read byte for byte; the LZ4 output is writable, as
    h5py's reads are."""
    import hdf5plugin

    a = _mixed(20011, dtype)
    algo, kw = (
        ("lz4", hdf5plugin.LZ4(nbytes=1000))
        if comp == "lz4-1000"
        else ("bslz4", hdf5plugin.Bitshuffle(nelems=512, cname="lz4"))
    )
    blob, ref = _h5_chunk(a, kw)
    out = decode_framed(blob, algo, a.itemsize, a.nbytes)
    assert out.tobytes() == ref.tobytes() == a.tobytes()
    assert out.flags.writeable


def _block_offsets(blob: bytes, count: int) -> list[int]:
    pos, offs = 12, []
    for _ in range(count):
        offs.append(pos)
        pos += 4 + int.from_bytes(blob[pos : pos + 4], "big")
    return offs


@pytest.mark.parametrize("algo", ["bslz4", "lz4"])
@pytest.mark.parametrize("damage", ["size-too-big", "size-one-short", "bytes-zeroed"])
def test_a_damaged_block_in_any_position_is_one_protocol_error(algo: str, damage: str) -> None:
    """Every block of a many-block chunk, first to last, damaged in turn: one ProtocolError, never a
    crash, a short or a wrong frame (a block that is cut by one byte or zeroed no longer decodes to
    its exact size: LZ4's safe decoder with our size refuses it)."""
    import hdf5plugin

    a = np.random.default_rng(1).poisson(2.0, 6000).astype("uint16")
    kw = hdf5plugin.LZ4(nbytes=1024) if algo == "lz4" else hdf5plugin.Bitshuffle(nelems=512, cname="lz4")
    blob, _ = _h5_chunk(a, kw)
    count = 12 if algo == "lz4" else 11  # ceil(12000 / 1024); 6000 // 512 (the last 368 elements: 368)
    for off in _block_offsets(blob, count):
        bad = bytearray(blob)
        n = int.from_bytes(blob[off : off + 4], "big")
        if damage == "size-too-big":
            bad[off : off + 4] = (len(blob)).to_bytes(4, "big")
        elif damage == "size-one-short":
            bad[off : off + 4] = (n - 1).to_bytes(4, "big")
        else:
            bad[off + 4 : off + 4 + n] = bytes(n)
        with pytest.raises(ProtocolError) as e:
            decode_framed(bytes(bad), algo, 2, a.nbytes)
        assert e.value.reason == "decompress_failed"


def test_bitunshuffle_leaves_the_threads_openmp_setting_as_it_was() -> None:
    """The bit transpose is held to one OpenMP thread for its call (a team of 2 spun on the shared
    2-core machine: tails of 440 ms a K2 frame; a speed choice, benchmarked, not asserted), and the
    calling thread's setting is put back after: torch on a shared libgomp sizes its parallel regions
    from it, and ``denoise FILE.h5`` reads its frames on torch's thread."""
    from sbd_stream.formats import framed_decode

    fns = framed_decode._omp_threads_fns()
    if not fns:
        pytest.skip("no OpenMP runtime found for bitshuffle")
    before = [get() for get, _ in fns]
    try:
        for _, set_ in fns:
            set_(3)
        a = np.arange(5000, dtype=np.uint16)
        blob = codec.compress_framed(a, "bslz4", backend="hdf5plugin")
        assert decode_framed(blob, "bslz4", 2, a.nbytes).tobytes() == a.tobytes()
        assert [get() for get, _ in fns] == [3] * len(fns)
    finally:
        for (_, set_), n in zip(fns, before, strict=True):
            set_(n)


@pytest.mark.parametrize("algo", ["lz4", "bslz4"])
def test_a_tiny_declared_block_costs_no_memory_per_block(algo: str) -> None:
    """A peer's block size of 1 byte (lz4) or 8 elements (bslz4) on a 16 MB frame: one ProtocolError,
    and the block sizes are not listed up front (a list of one entry per block was 8 bytes per block:
    128 MB here for the lz4 chunk, 16 MB for the bslz4, before the first block was looked at)."""
    import struct
    import tracemalloc

    nbytes = 16 << 20
    blob = struct.pack(">QI", nbytes, 1 if algo == "lz4" else 8) + struct.pack(">I", 3) + b"abc"
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            codec.decompress_framed(blob, algo, 1, nbytes, backend="hdf5plugin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * nbytes  # the output (or shuffled) buffer of nbytes itself, not 8 bytes per block
