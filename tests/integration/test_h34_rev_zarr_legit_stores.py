"""Legitimate zarr stores the guard refused (session 34 review of ``stack_zarr_guard`` /
``stack_zarr_bounded``): each is written with zarr's own API and must read through ``open_stack`` (or, for
a dtype ``open_stack`` does not take, ``open_zarr``) to exactly the frames zarr itself reads.

* a sharded zarr v3 array whose index is at the start of the shard (``index_location="start"``), with a
  Zstd codec: a shard read in part has its index read as bytes 0 to 16 a chunk, which the store's header
  check took for a Zstd chunk "declaring no size" and refused;
* zarr v3 numcodecs filters (``Delta``, ``FixedScaleOffset``, ``AsType``) before a compressor: refused as
  "codecs ... in a row" before any chunk was read; a chunk decoding past the widened bound is still a bomb;
* a zarr v2 complex128 array with a filter: the bound allowed 8 bytes an item with any filter, half a
  complex128's, so every chunk was refused as a bomb.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.codecs as zc
import zarr.codecs.numcodecs as zn

from sbd_stream.sources.stack_zarr import open_zarr
from sbd_stream.sources.stacks import StackError, open_stack

pytestmark = pytest.mark.integration
FRAMES = np.random.default_rng(3).poisson(2.0, (5, 24, 20)).astype("<f4")


def _zarr_read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs' codecs "not in the Zarr version 3 specification"
        return np.asarray(zarr.open_array(str(path), mode="r")[:])


def _frames_one_by_one(path: Path) -> np.ndarray:
    """Each frame read alone (a shard of two frames read in part), then all of them in one read."""
    stack = open_stack(path)
    one = np.stack([np.asarray(stack.frames[i : i + 1])[0] for i in range(len(stack.frames))])
    every = np.asarray(stack.frames[0 : len(stack.frames)])
    assert every.tobytes() == one.tobytes()
    return every


@pytest.mark.parametrize("codec", ["zstd", "blosc", "gzip"])
def test_shard_with_its_index_at_the_start_reads_as_zarr_reads_it(codec: str, tmp_path: Path) -> None:
    comp = {"zstd": zc.ZstdCodec(level=3), "blosc": zc.BloscCodec(), "gzip": zc.GzipCodec()}[codec]
    frames = FRAMES.copy()
    frames[0] = 0.0  # the first inner chunk not written: its index entry is 2**64 - 1 (empty)
    sharding = zc.ShardingCodec(
        chunk_shape=(1, 12, 10), codecs=[zc.BytesCodec(), comp], index_location="start"
    )
    path = tmp_path / f"start_{codec}.zarr"
    arr = zarr.create_array(store=str(path), shape=frames.shape, chunks=(2, 24, 20), dtype="<f4",
                            serializer=sharding, compressors=None, fill_value=0.0,
                            config={"write_empty_chunks": False})  # fmt: skip
    arr[:] = frames
    got = _frames_one_by_one(path)
    assert got.tobytes() == _zarr_read(path).tobytes() == frames.tobytes()


V3_FILTERS = {
    "delta+gzip": ([zn.Delta(dtype="<f4")], zc.GzipCodec(level=1)),
    "fixedscaleoffset+zstd": (
        [zn.FixedScaleOffset(offset=0, scale=4, dtype="<f4", astype="<u2")],
        zc.ZstdCodec(),
    ),
    "astype(f8)+zlib": ([zn.AsType(encode_dtype="<f8", decode_dtype="<f4")], zn.Zlib(level=1)),
}


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("name", sorted(V3_FILTERS))
def test_v3_numcodecs_filter_before_a_compressor_reads_as_zarr_reads_it(
    name: str, sharded: bool, tmp_path: Path
) -> None:
    filters, comp = V3_FILTERS[name]
    path = tmp_path / "filtered.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chunks, shards = ((1, 12, 10), (2, 24, 20)) if sharded else ((1, 24, 20), None)
        arr = zarr.create_array(store=str(path), shape=FRAMES.shape, chunks=chunks, shards=shards,
                                dtype="<f4", filters=filters, compressors=comp)  # fmt: skip
        arr[:] = FRAMES
    assert _frames_one_by_one(path).tobytes() == _zarr_read(path).tobytes()


def test_bomb_behind_a_v3_filter_is_still_refused(tmp_path: Path) -> None:
    """The filter widens the bound to 8 bytes an item (``AsType`` to float64), no further: a gzip chunk
    decoding to 64 MB is refused while decoded, having allocated at most the bound."""
    path = tmp_path / "bomb.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(store=str(path), shape=FRAMES.shape, chunks=(1, 24, 20), dtype="<f4",
                                filters=[zn.AsType(encode_dtype="<f8", decode_dtype="<f4")],
                                compressors=zc.GzipCodec())  # fmt: skip
        arr[:] = FRAMES
    (path / "c" / "0" / "0" / "0").write_bytes(gzip.compress(bytes(64 << 20), 9))
    stack = open_stack(path)
    with pytest.raises(StackError, match=r"decodes to more than the chunk's 3840 bytes"):
        stack.frames[0:1]


@pytest.mark.parametrize("filt", ["shuffle", "delta"])
def test_v2_complex128_with_a_filter_reads_as_zarr_reads_it(filt: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = (rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))).astype("<c16")
    f = numcodecs.Shuffle(elementsize=16) if filt == "shuffle" else numcodecs.Delta(dtype="<c16")
    path = tmp_path / "c16.zarr"
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=(1, 16, 16), dtype="<c16",
                            filters=[f], compressors=numcodecs.GZip(5), zarr_format=2)  # fmt: skip
    arr[:] = data
    frames, _, _ = open_zarr(path, None)  # open_stack takes intensities only; this is the zarr reader
    got = np.asarray(frames[0:3])
    assert got.tobytes() == _zarr_read(path).tobytes()
    assert np.allclose(got, data)  # Delta on floats rounds: zarr's own read is the reference
