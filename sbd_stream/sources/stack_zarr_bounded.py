"""gzip / zlib / bz2 / lzma chunks of a zarr array decoded once, to at most the bytes the array's metadata
implies: codecs standing in for numcodecs' (``BoundedNumcodec``, zarr v2; ``BoundedBytesCodec``, zarr v3
and inside a shard) whose decode is numcodecs' own, stopped one byte past the bound.

Why (session 34): these formats state no decoded size in their header, so ``stack_zarr_guard`` once
bounded a chunk by decoding it whole (stopped past the bound: a 400 kB chunk decoding to 400 MB was a
bomb), then handed the compressed bytes on and numcodecs decoded them again: twice the decode work on
every read (``benchmarks/bench_zarr_guard.py``). Here the one bounded decode is the one kept. Each
decoder is the standard-library one numcodecs calls, driven as numcodecs (and ``bz2.decompress`` /
``lzma.decompress``) drive it, with an output limit: a legitimate chunk decodes to the same bytes, a
damaged one fails with the same exception and message, and one decoding past the bound is refused
(``ZarrGuardError``, as before) having allocated at most the bound and one byte. In zarr v3 the LZ4 /
Blosc / Zstd codecs are wrapped too (``HeaderCheckedCodec``): a shard read whole reached them unchecked.
An lzma chunk's decoder may reserve no more than ``stack_headers.lzma_memlimit`` of the chunk (session 35:
a 16 kB chunk declaring a 1.5 GiB dictionary had it reserved); more is refused, as a bomb is.
"""

from __future__ import annotations

import asyncio
import bz2
import dataclasses
import gzip
import io
import lzma
import zlib
from typing import Any

import numcodecs
import numcodecs.abc
import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import Buffer
from zarr.core.buffer.cpu import as_numpy_array_wrapper

from sbd_stream.sources.stack_headers import LZMA_OVERHEAD, lzma_memlimit
from sbd_stream.sources.stack_zarr_guard import HEADED, STREAMED, ChunkCheck, ZarrGuardError

__all__ = [
    "BoundedBytesCodec", "BoundedNumcodec", "HeaderCheckedCodec", "bounded_array", "bounded_decode",
    "lzma_memlimit",
]  # fmt: skip


def bounded_decode(codec: Any, buf: Any, bound: int) -> bytes:
    """What numcodecs' ``codec.decode(buf)`` returns (``codec``: its GZip, Zlib, BZ2 or LZMA), decoded
    to at most ``bound + 1`` bytes; ``ZarrGuardError`` past ``bound``."""
    name = str(codec.codec_id)
    data = memoryview(ensure_contiguous_ndarray(buf)).cast("B")
    if name == "gzip":  # numcodecs: GzipFile(...).read(), every member, zero padding skipped
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as f:
            out = f.read(bound + 1)
    elif name == "zlib":  # numcodecs: zlib.decompress, one stream, what follows it ignored
        d = zlib.decompressobj()
        out = d.decompress(data, bound + 1)
        if len(out) <= bound and not d.eof:
            raise zlib.error("Error -5 while decompressing data: incomplete or truncated stream")
    elif name == "bz2":
        out = _streams(lambda: bz2.BZ2Decompressor(), OSError, ValueError, data, bound, stop_empty=True)
    elif name == "lzma":
        out = _lzma(codec.format, codec.filters, data, bound)
    else:
        raise ZarrGuardError(f"chunks compressed with {name!r}: no bounded decoder; not read")
    if len(out) > bound:
        raise ZarrGuardError(f"a {name} chunk decodes to more than the chunk's {bound} bytes (crafted?)")
    return out


def _lzma(fmt: int, filters: Any, data: Any, bound: int) -> bytes:
    """``lzma.decompress(data, fmt, filters=filters)`` to at most ``bound + 1`` bytes, the decoder's
    memory limited to ``lzma_memlimit(bound)`` (a raw stream's dictionary is its filters', checked
    here: liblzma takes no memory limit for it); ``ZarrGuardError`` where more is asked."""
    limit = lzma_memlimit(bound)
    said = f"a lzma chunk declares a dictionary of over {limit - LZMA_OVERHEAD} bytes"
    refused = f"{said}, the chunk holds {bound}; not decoded (crafted?)"
    if fmt == lzma.FORMAT_RAW:
        for f in filters or ():
            if isinstance(f, dict) and int(f.get("dict_size", 0)) > limit - LZMA_OVERHEAD:
                raise ZarrGuardError(refused)
        mem = None
    else:
        mem = limit
    make = lambda: lzma.LZMADecompressor(fmt, mem, filters)  # noqa: E731
    try:
        return _streams(make, lzma.LZMAError, lzma.LZMAError, data, bound, stop_empty=False)
    except lzma.LZMAError as e:
        # CPython's one message for LZMA_MEMLIMIT_ERROR (Modules/_lzmamodule.c): the header asked more
        if "Memory usage limit" in str(e):
            raise ZarrGuardError(refused) from None
        raise


def _streams(make: Any, bad: type[Exception], short: type[Exception], data: Any, bound: int,
             stop_empty: bool) -> bytes:  # fmt: skip
    """``bz2.decompress`` / ``lzma.decompress`` (CPython 3.11), each stream's output limited so that all
    of them make at most ``bound + 1`` bytes: streams follow one another; data after the first stream
    that is none is ignored; a stream cut short raises ``short``. ``stop_empty``: bz2 decodes nothing
    from no bytes, where lzma raises."""
    out: list[bytes] = []
    total = 0
    while data or not (stop_empty or out):
        d = make()
        try:
            res = d.decompress(data, bound + 1 - total)
        except bad:
            if out:
                break  # leftover data that is no stream: ignored, as the standard library does
            raise
        out.append(res)
        total += len(res)
        if total > bound:
            break  # refused by the caller; nothing more decoded
        if not d.eof:  # under the limit and not at its end: the input ran out
            raise short("Compressed data ended before the end-of-stream marker was reached")
        data = d.unused_data
        if not data:
            break
    return b"".join(out)


class BoundedNumcodec(numcodecs.abc.Codec):
    """A zarr v2 array's compressor (``inner``), decoded by ``bounded_decode``; encoding and the config
    are ``inner``'s (this store is read only; the config is what zarr shows)."""

    codec_id = "sbd_bounded"  # zarr's Numcodec check reads a class attribute; the instance's is inner's

    def __init__(self, inner: Any, bound: int) -> None:
        self.inner, self.bound, self.codec_id = inner, bound, str(inner.codec_id)

    def decode(self, buf: Any, out: Any = None) -> Any:
        return ndarray_copy(bounded_decode(self.inner, buf, self.bound), out)

    def encode(self, buf: Any) -> Any:
        return self.inner.encode(buf)

    def get_config(self) -> dict[str, Any]:
        return dict(self.inner.get_config())


@dataclasses.dataclass(frozen=True)
class _Wrapped(BytesBytesCodec):
    """A zarr v3 bytes-to-bytes codec standing in for ``inner``: encoding, sizes and the config (what a
    store's metadata says) are ``inner``'s; the subclasses change only how a chunk is decoded."""

    inner: Any
    is_fixed_size = False

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer | None:
        return await self.inner._encode_single(chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        return int(self.inner.compute_encoded_size(input_byte_length, chunk_spec))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.inner.to_dict())


@dataclasses.dataclass(frozen=True)
class BoundedBytesCodec(_Wrapped):
    """A zarr v3 bytes-to-bytes codec (``inner``: zarr's ``gzip``, ``numcodecs.zlib`` / ``bz2`` /
    ``lzma``) decoded by ``bounded_decode`` as ``numcodec`` (the numcodecs codec ``inner`` decodes
    with)."""

    numcodec: Any
    bound: int

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        decode = lambda b: bounded_decode(self.numcodec, b, self.bound)  # noqa: E731
        return as_numpy_array_wrapper(decode, chunk_bytes, chunk_spec.prototype)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


@dataclasses.dataclass(frozen=True)
class HeaderCheckedCodec(_Wrapped):
    """A zarr v3 LZ4 / Blosc / Zstd codec (``inner``) whose chunk header is checked (``check.header``)
    before ``inner`` decodes it. Why: the store checks each chunk file, and each inner chunk of a shard
    it reads by byte range, but a shard read whole (every frame of it) reached numcodecs unchecked: a
    26-byte Zstd chunk in a shard declaring 1 GB allocated 1 GB (session 34)."""

    check: ChunkCheck

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        self.check.header(chunk_bytes.as_numpy_array().view(np.uint8).reshape(-1))
        return await self.inner._decode_single(chunk_bytes, chunk_spec)


def bounded_array(arr: Any, check: ChunkCheck) -> Any:
    """``arr`` (a ``zarr.Array``) with its gzip / zlib / bz2 / lzma codec, in a shard too, replaced by
    one decoding at most ``check.bound`` bytes (zarr v3: its LZ4 / Blosc / Zstd codec by one checking
    each chunk's header first); ``arr`` itself for no compressor, or LZ4 / Blosc / Zstd in zarr v2 (the
    store checks those). ``ZarrGuardError`` when no codec is found to replace."""
    meta = arr.metadata
    if check.codec not in STREAMED and (check.codec not in HEADED or meta.zarr_format == 2):
        return arr
    import zarr
    from zarr.core.array import AsyncArray

    if meta.zarr_format == 2:
        if meta.compressor is None or str(meta.compressor.codec_id) != check.codec:
            raise ZarrGuardError(f"no {check.codec} compressor to bound; not read")
        new = dataclasses.replace(meta, compressor=BoundedNumcodec(meta.compressor, check.bound))
    else:
        codecs, replaced = _bounded_codecs(tuple(meta.codecs), check)
        if not replaced:
            raise ZarrGuardError(f"no {check.codec} codec to bound; not read")
        new = dataclasses.replace(meta, codecs=codecs)
    try:
        old = arr._async_array  # zarr has no public way to give an open array other codecs
        # ``config`` from zarr 3.1.4; ``_config`` before (3.0.0 - 3.1.3): without the fallback every
        # compressed store was refused there (session 34 review)
        config = old.config if hasattr(old, "config") else old._config
        return zarr.Array(AsyncArray(new, old.store_path, config))
    except (AttributeError, TypeError) as e:  # a zarr whose internals moved: refused, not read unbounded
        raise ZarrGuardError(f"zarr {zarr.__version__}: its chunks cannot be bounded ({e}); not read") from e


def _bounded_codecs(codecs: tuple[Any, ...], check: ChunkCheck) -> tuple[tuple[Any, ...], int]:
    """``codecs`` with each of gzip / zlib / bz2 / lzma bounded, each of LZ4 / Blosc / Zstd header-checked
    (a shard's inner codecs too), and how many were."""
    out: list[Any] = []
    replaced = 0
    for c in codecs:
        if isinstance(c, ShardingCodec):
            inner, n = _bounded_codecs(tuple(c.codecs), check)
            out.append(dataclasses.replace(c, codecs=inner))
            replaced += n
            continue
        spec = c.to_dict()
        name = str(spec["name"]).removeprefix("numcodecs.")
        if name in STREAMED:
            numcodec = numcodecs.get_codec({**dict(spec.get("configuration") or {}), "id": name})
            out.append(BoundedBytesCodec(c, numcodec, check.bound))
            replaced += 1
        elif name in HEADED:
            out.append(HeaderCheckedCodec(c, check))
            replaced += 1
        else:
            out.append(c)
    return tuple(out), replaced
