"""gzip / zlib / bz2 / lzma chunks of a zarr store are decoded once, through the bound, to exactly what
zarr / numcodecs decode them to (``sources/stack_zarr_bounded.py``).

Session 34: the guard bounded each such chunk by decoding it whole, then numcodecs decoded it again,
twice the work on every read. Stores here are written with zarr's own API (v2, v3, v3 sharded); the
decode work is counted in the standard library's decompressors themselves (every byte they put out),
and numcodecs' own decode through a subclass registered as the codec.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.registry
import numpy as np
import pytest
import zarr
import zarr.codecs
import zarr.codecs.numcodecs as zn
from helpers_memory import peak_reading
from zarr.storage import LocalStore

from sbd_stream.sources.stack_zarr_bounded import bounded_decode
from sbd_stream.sources.stack_zarr_guard import ZarrGuardError
from sbd_stream.sources.stacks import open_stack

pytestmark = pytest.mark.integration
FRAMES = np.random.default_rng(1).poisson(1.0, (4, 64, 64)).astype("<f4")
V2 = {"gzip": lambda: numcodecs.GZip(5), "zlib": lambda: numcodecs.Zlib(5), "bz2": lambda: numcodecs.BZ2(5),
      "lzma": lambda: numcodecs.LZMA(preset=1)}  # fmt: skip
V3 = {"gzip": lambda: zarr.codecs.GzipCodec(level=5), "zlib": lambda: zn.Zlib(level=5),
      "bz2": lambda: zn.BZ2(level=5), "lzma": lambda: zn.LZMA(preset=1)}  # fmt: skip
LAYOUTS = ["v2", "v3", "v3-sharded"]


def _store(path: Path, codec: str, layout: str) -> Path:
    """``FRAMES`` written by zarr, one frame a chunk (two chunks a shard), compressed with ``codec``."""
    fmt = 2 if layout == "v2" else 3
    comp = (V2 if fmt == 2 else V3)[codec]()
    shards = (2, 64, 64) if layout == "v3-sharded" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs' codecs "not in the Zarr version 3 specification"
        arr = zarr.create_array(store=str(path), shape=FRAMES.shape, chunks=(1, 64, 64), shards=shards,
                                dtype="<f4", compressors=comp, zarr_format=fmt)  # fmt: skip
        arr[:] = FRAMES
    return path


def _zarr_read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(zarr.open_array(store=LocalStore(path, read_only=True), mode="r")[:])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("codec", list(V2))
def test_guarded_frames_are_zarrs_own(codec: str, layout: str, tmp_path: Path) -> None:
    path = _store(tmp_path / "x.zarr", codec, layout)
    s = open_stack(path)
    try:
        got = np.concatenate([np.asarray(s.frames[i : i + 3]) for i in range(0, len(FRAMES), 3)])
    finally:
        s.close()
    want = _zarr_read(path)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes() == FRAMES.tobytes()


class _Counted:
    """A real decompressor whose output is tallied (every byte it puts out is decode work)."""

    def __init__(self, real: Any, tally: list[int]) -> None:
        self._real, self._tally = real, tally

    def decompress(self, *args: Any, **kwargs: Any) -> bytes:
        out = self._real.decompress(*args, **kwargs)
        self._tally.append(len(out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The bytes every zlib / gzip / bz2 / lzma decompressor of this process puts out while the test runs."""
    tally: list[int] = []
    real_obj, real_fn = zlib.decompressobj, zlib.decompress
    real_bz2, real_lzma = bz2.BZ2Decompressor, lzma.LZMADecompressor

    def one_shot(*args: Any, **kwargs: Any) -> bytes:
        out = real_fn(*args, **kwargs)
        tally.append(len(out))
        return out

    monkeypatch.setattr(zlib, "decompress", one_shot)
    monkeypatch.setattr(zlib, "decompressobj", lambda *a, **k: _Counted(real_obj(*a, **k), tally))
    monkeypatch.setattr(bz2, "BZ2Decompressor", lambda *a, **k: _Counted(real_bz2(*a, **k), tally))
    monkeypatch.setattr(lzma, "LZMADecompressor", lambda *a, **k: _Counted(real_lzma(*a, **k), tally))
    yield tally


def _counting(codec: str) -> type:
    """numcodecs' own codec, its ``decode`` calls counted (registered in its place for one test)."""
    base = type(numcodecs.get_codec({"id": codec}))

    class Counting(base):  # type: ignore[misc, valid-type]
        calls = 0

        def decode(self, buf: Any, out: Any = None) -> Any:
            type(self).calls += 1
            return super().decode(buf, out)

    return Counting


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("codec", list(V2))
def test_each_chunk_is_decoded_once(codec: str, layout: str, tmp_path: Path, decoded: list[int]) -> None:
    path = _store(tmp_path / "x.zarr", codec, layout)
    counting = _counting(codec)
    real = numcodecs.registry.codec_registry[codec]
    numcodecs.register_codec(counting, codec)
    try:
        decoded.clear()  # writing the store decoded nothing; from here, the read alone
        s = open_stack(path)
        try:
            got = np.asarray(s.frames[0 : len(FRAMES)])
        finally:
            s.close()
    finally:
        numcodecs.registry.codec_registry[codec] = real
    assert got.tobytes() == FRAMES.tobytes()
    assert sum(decoded) == FRAMES.nbytes, f"{sum(decoded) / FRAMES.nbytes:.2f} times the frames decoded"
    assert counting.calls == 0, "numcodecs decoded the chunks again after the bounded decode"


def _variants(codec: str) -> dict[str, bytes]:
    """Legitimate and damaged chunks: streams back to back, trailing bytes, cut short, empty."""
    raw = FRAMES[0].tobytes()
    enc = {"gzip": lambda b: gzip.compress(b, 5), "zlib": lambda b: zlib.compress(b, 5),
           "bz2": lambda b: bz2.compress(b, 5), "lzma": lambda b: lzma.compress(b)}[codec]  # fmt: skip
    one = enc(raw)
    flipped = one[:20] + bytes([one[20] ^ 0xFF]) + one[21:]
    return {"one": one, "two streams": enc(raw[:9000]) + enc(raw[9000:]), "trailing junk": one + b"junk",
            "trailing zeros": one + bytes(8), "cut short": one[: len(one) // 2], "empty": b"",
            "not compressed": raw[:100], "flipped": flipped}  # fmt: skip


@pytest.mark.parametrize("codec", list(V2))
def test_bounded_decode_is_numcodecs_decode_for_legit_and_damaged_chunks(codec: str) -> None:
    nc = V2[codec]()
    for name, chunk in _variants(codec).items():
        buf = np.frombuffer(chunk, dtype=np.uint8)
        try:
            want: Any = bytes(nc.decode(buf))
        except Exception as e:  # whatever numcodecs raises, the bounded decode raises the same
            want = (type(e), str(e))
        try:
            got: Any = bounded_decode(nc, buf, FRAMES[0].nbytes * 2)
        except Exception as e:
            got = (type(e), str(e))
        assert got == want, f"{codec}, {name}"


@pytest.mark.parametrize("codec", list(V2))
def test_a_chunk_decoding_past_its_bound_is_refused(codec: str) -> None:
    chunk = V2[codec]().encode(FRAMES[0].tobytes())
    assert len(bounded_decode(V2[codec](), chunk, FRAMES[0].nbytes)) == FRAMES[0].nbytes
    with pytest.raises(ZarrGuardError, match=f"a {codec} chunk decodes to more than the chunk's 16383 bytes"):
        bounded_decode(V2[codec](), chunk, FRAMES[0].nbytes - 1)


def test_bomb_in_a_shard_read_whole_is_refused(tmp_path: Path) -> None:
    """A v3 shard of two gzip chunks, the first a 64 kB bomb decoding to 64 MB. Reading both frames
    reads the shard whole, whose inner chunks the store's check skipped: numcodecs decoded the bomb."""
    store = tmp_path / "x.zarr"
    store.mkdir()
    meta = {"shape": [2, 64, 64], "data_type": "float32", "zarr_format": 3, "node_type": "array",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 64, 64]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0.0,
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [1, 64, 64],
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "gzip", "configuration": {"level": 9}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}}]}  # fmt: skip
    (store / "zarr.json").write_text(json.dumps(meta))
    bomb, frame = gzip.compress(bytes(64 * 1024**2), 9), gzip.compress(FRAMES[1].tobytes(), 9)
    index = struct.pack("<QQQQ", 0, len(bomb), len(bomb), len(frame))
    (store / "c/0/0").mkdir(parents=True)
    (store / "c/0/0/0").write_bytes(bomb + frame + index)
    error, peak = peak_reading(store, 0, 2)
    assert "a gzip chunk decodes to more than the chunk's 16384 bytes" in error
    assert peak < 16 * 1024**2, f"{peak} bytes allocated for a 64 kB shard"


def test_compressor_given_as_a_v2_filter_is_refused(tmp_path: Path) -> None:
    """A v2 ``.zarray`` with no compressor and zlib as a filter: the filter's decode was never bounded (a
    64 kB chunk decoded to 64 MB before zarr saw it was no 16 kB chunk)."""
    store = tmp_path / "x.zarr"
    store.mkdir()
    zarray = {"shape": [2, 64, 64], "chunks": [1, 64, 64], "dtype": "<f4", "fill_value": 0.0, "order": "C",
              "filters": [{"id": "zlib", "level": 9}], "dimension_separator": ".", "compressor": None,
              "zarr_format": 2}  # fmt: skip
    (store / ".zarray").write_text(json.dumps(zarray))
    (store / "0.0.0").write_bytes(zlib.compress(bytes(64 * 1024**2), 9))
    error, peak = peak_reading(store, 0, 1, open_inside=True)
    assert "a zlib filter: its decoded size cannot be checked" in error
    # refused at open: the peak is the metadata read's buffer (``MAX_META_BYTES``, 16 MiB), no 64 MiB decode
    assert peak < 32 * 1024**2, f"{peak} bytes allocated for a 64 kB chunk"


@pytest.mark.parametrize(
    ("codec", "chunk"),
    [
        ({"name": "zstd", "configuration": {"level": 1, "checksum": False}},
         struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 1024**3) + b"\x01\x00\x00"),
        ({"name": "numcodecs.lz4", "configuration": {"acceleration": 1}},
         struct.pack("<i", 1024**3) + bytes(8)),
    ],
    ids=["zstd", "lz4"],
)  # fmt: skip
def test_header_declaring_gigabytes_in_a_shard_read_whole_is_refused(
    codec: dict, chunk: bytes, tmp_path: Path
) -> None:
    """A v3 shard of two chunks whose headers declare 1 GB each, read whole (both frames): the store
    checks a chunk file and an inner chunk read by range, not the inner chunks of a whole shard;
    numcodecs allocated the 1 GB declared."""
    store = tmp_path / "x.zarr"
    store.mkdir()
    meta = {"shape": [2, 64, 64], "data_type": "float32", "zarr_format": 3, "node_type": "array",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 64, 64]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0.0,
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [1, 64, 64],
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, codec],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}}]}  # fmt: skip
    (store / "zarr.json").write_text(json.dumps(meta))
    (store / "c/0/0").mkdir(parents=True)
    index = struct.pack("<QQQQ", 0, len(chunk), len(chunk), len(chunk))
    (store / "c/0/0/0").write_bytes(chunk + chunk + index)
    error, peak = peak_reading(store, 0, 2)
    assert "chunk declares 1073741824 bytes, the chunk holds 16384" in error
    assert peak < 16 * 1024**2, f"{peak} bytes allocated for a 52-byte shard"
