"""A zarr store read through checks: every file is a bounded regular file, and every compressed chunk's
header (or, for streaming codecs, its decoded length) is checked against the chunk's size before zarr /
numcodecs decode it.

Why (session 33, the crash hunt on zarr inputs): zarr's ``LocalStore`` reads whatever a key names, and
numcodecs allocates what a chunk's header declares. A chunk that was a FIFO hung ``denoise`` for ever; a
chunk or ``.zattrs`` symlinked to ``/dev/zero`` (or a 50 GB sparse chunk file) was read until memory ran
out; an 18-byte ``numcodecs.LZ4`` chunk declaring 2 GB, a 20-byte Zstd frame declaring 10^12 bytes or a
Blosc header declaring 4 GB made numcodecs allocate that much before failing; a 400 kB gzip / zlib / bz2
/ lzma chunk decoded to 400 MB before zarr noticed it was no chunk of 16 kB. Here:

* a key is read only when it names a regular file (a symlink to one is followed, as zarr does); a
  device, FIFO or socket is one error; metadata files may hold ``MAX_META_BYTES``, a chunk file
  ``raw_bound`` bytes (the chunk's own size plus the codecs' overhead), read no further;
* ``LZ4`` / ``Blosc`` / ``Zstd`` chunks: the decoded size their header declares may not exceed the
  chunk's (a Zstd frame that declares none is refused: numcodecs would grow its output without bound);
* ``GZip`` / ``Zlib`` / ``BZ2`` / ``LZMA`` chunks (no size in their header) are decoded here first, at
  most one byte past the chunk's size, and refused past it;
* any other bytes-to-bytes codec, or two compressors in a row, is refused before any chunk is read: its
  decoded size could not be checked.
"""

from __future__ import annotations

import asyncio
import bz2
import lzma
import math
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, RangeByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

__all__ = ["MAX_META_BYTES", "ChunkCheck", "GuardedStore", "ZarrGuardError", "chunk_check"]

MAX_META_BYTES = 16 * 1024 * 1024
"""Most bytes of one metadata file (``zarr.json``, ``.zarray``, ``.zattrs``, ...): abTEM's are a few kB."""
META_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}
OVERHEAD = 64 * 1024
"""Bytes a codec may add to a chunk (headers, an incompressible chunk stored with its framing)."""
_ZSTD_MAGIC = 0xFD2FB528
_STREAMED: dict[str, Callable[[], Any]] = {
    "zlib": lambda: zlib.decompressobj(47),  # 32 + 15: a zlib or a gzip header, as numcodecs writes them
    "gzip": lambda: zlib.decompressobj(47),
    "bz2": bz2.BZ2Decompressor,
    "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO),
}
_HEADED = {"lz4", "blosc", "zstd"}
_NEUTRAL_V3 = {"bytes", "transpose"}


class ZarrGuardError(OSError):
    """A store's file or chunk refused before it is read or decoded (one line, no store name)."""


class ChunkCheck:
    """What a chunk file of one array may be: its codec (None: stored raw), the most bytes its codec
    may decode to, and whether a trailing CRC32C (4 bytes) follows the compressed bytes."""

    def __init__(self, codec: str | None, bound: int, crc: bool = False, inner: int = 0) -> None:
        self.codec, self.bound, self.crc, self.inner = codec, bound, crc, inner

    @property
    def raw_bound(self) -> int:
        """Most bytes of a chunk file: the chunk's own size and the codec's overhead; a shard's (``inner``
        chunks), all of theirs and its index (16 bytes a chunk and a CRC32C)."""
        one = self.bound + OVERHEAD + self.bound // 16
        return one if not self.inner else self.inner * (one + 16) + 4

    def __call__(self, data: np.ndarray) -> None:
        if self.crc:
            data = data[:-4]
        if self.codec in _HEADED:
            declared = _declared(self.codec, data)
            if declared is None or declared > self.bound:
                said = "no size" if declared is None else f"{declared} bytes"
                raise ZarrGuardError(
                    f"a {self.codec} chunk declares {said}, the chunk holds {self.bound}; "
                    "not decoded (crafted?)"
                )
        elif self.codec in _STREAMED:
            _bounded(self.codec, data, self.bound)


def _declared(codec: str, data: np.ndarray) -> int | None:
    """The decoded size a chunk's header states (None: none stated, or no header)."""
    head = data[:18].tobytes()
    if codec == "lz4":  # numcodecs: a little-endian int32, then one LZ4 block
        return struct.unpack_from("<i", head)[0] if len(head) >= 4 else None
    if codec == "blosc":  # c-blosc 1: version, versionlz, flags, typesize, nbytes, blocksize, cbytes
        return struct.unpack_from("<I", head, 4)[0] if len(head) >= 16 else None
    return _zstd_content_size(head)


def _zstd_content_size(head: bytes) -> int | None:
    """A Zstd frame's Frame_Content_Size (RFC 8878, 3.1.1.1); None where the frame states none."""
    if len(head) < 5 or struct.unpack_from("<I", head)[0] != _ZSTD_MAGIC:
        return None
    desc = head[4]
    fcs_flag, single, dict_flag = desc >> 6, (desc >> 5) & 1, desc & 3
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(head) < at + size:
        return None
    value = int.from_bytes(head[at : at + size], "little")
    return value + 256 if size == 2 else value


def _bounded(codec: str, data: np.ndarray, bound: int) -> None:
    """Decode ``data`` (every stream in it) to at most ``bound + 1`` bytes; refuse more. A chunk that
    fails to decode is left to numcodecs, whose error names it."""
    rest, total = data.tobytes(), 0
    try:
        while rest and total <= bound:
            d = _STREAMED[codec]()
            total += len(d.decompress(rest, bound + 1 - total))
            rest = d.unused_data if d.eof else b""
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError):
        return
    if total > bound:
        raise ZarrGuardError(f"a {codec} chunk decodes to more than the chunk's {bound} bytes (crafted?)")


def chunk_check(arr: Any) -> ChunkCheck:
    """The check of ``arr``'s chunk files; ``ZarrGuardError`` for a pipeline whose decoded size cannot be
    checked (an unknown compressor, two in a row)."""
    meta = arr.metadata
    itemsize = np.dtype(arr.dtype).itemsize
    n = math.prod(int(c) for c in arr.chunks)  # a sharded array's inner chunks: what each codec decodes
    if meta.zarr_format == 2:
        comp = meta.compressor
        codec = None if comp is None else str(comp.codec_id)
        bound = n * (8 if meta.filters else itemsize)  # a filter (astype) may widen an item up to 8 bytes
        return _known(ChunkCheck(codec, max(bound, itemsize)))
    codecs = [c.to_dict() for c in meta.codecs]
    inner = 0
    if codecs and codecs[-1]["name"] == "sharding_indexed":
        inner = math.prod(int(s) for s in arr.shards) // n
        codecs = list(codecs[-1].get("configuration", {}).get("codecs", []))
        codecs = [c if isinstance(c, dict) else c.to_dict() for c in codecs]
    names = [str(c["name"]) for c in codecs if str(c["name"]) not in _NEUTRAL_V3]
    crc = bool(names) and names[-1] == "crc32c"
    names = names[:-1] if crc else names
    if len(names) > 1:
        raise ZarrGuardError(f"codecs {', '.join(names)} in a row: the decoded size cannot be checked")
    codec = names[0].removeprefix("numcodecs.") if names else None
    return _known(ChunkCheck(codec, n * itemsize, crc, inner))


def _known(check: ChunkCheck) -> ChunkCheck:
    if check.codec is not None and check.codec not in _HEADED | set(_STREAMED):
        known = ", ".join(sorted(_HEADED | set(_STREAMED)))
        raise ZarrGuardError(
            f"chunks compressed with {check.codec!r}, whose decoded size cannot be checked before decoding "
            f"(read: none, {known}); not read"
        )
    return check


class GuardedStore(LocalStore):
    """A read-only ``LocalStore`` whose reads are checked (module docstring); ``check`` is set once the
    array is known (until then only metadata is read)."""

    check: ChunkCheck | None = None

    def __init__(self, root: Path | str) -> None:
        super().__init__(root, read_only=True)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        meta = key.rsplit("/", 1)[-1] in META_NAMES
        limit = MAX_META_BYTES if meta or self.check is None else self.check.raw_bound
        path = self.root / key
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(mode):
            return None
        if not stat.S_ISREG(mode):
            raise ZarrGuardError(f"{key}: not a regular file (a device, FIFO or socket); not read")
        size = os.stat(path).st_size
        if isinstance(byte_range, RangeByteRequest) and not 0 <= byte_range.start <= byte_range.end <= size:
            said = f"bytes {byte_range.start} to {byte_range.end}"
            raise ZarrGuardError(f"{key}: {said} asked of a {size}-byte file (a crafted shard index?)")
        if byte_range is None:
            data = await asyncio.to_thread(_read_at_most, path, limit + 1)  # in a thread, as LocalStore reads
            if len(data) > limit:
                raise ZarrGuardError(f"{key}: over {limit} bytes, more than it can hold; not read (crafted?)")
            buf = (prototype or default_buffer_prototype()).buffer.from_bytes(data)
        else:
            buf = await super().get(key, prototype, byte_range)
        whole_shard = byte_range is None and self.check is not None and self.check.inner
        if buf is not None and not meta and self.check is not None and not whole_shard and _chunk(byte_range):
            self.check(buf.as_numpy_array().view(np.uint8).reshape(-1))
        return buf

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]


def _read_at_most(path: Path, n: int) -> bytes:
    """At most ``n`` bytes of the regular file ``path`` (a file grown since its size was checked, or a
    /proc file of size 0, is still read no further)."""
    with open(path, "rb") as f:
        return f.read(n)


def _chunk(byte_range: ByteRequest | None) -> bool:
    """A whole chunk file, or a sharded array's inner chunk (a start-end range; its index is a suffix)."""
    return byte_range is None or isinstance(byte_range, RangeByteRequest)
