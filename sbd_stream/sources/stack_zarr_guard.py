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
* ``GZip`` / ``Zlib`` / ``BZ2`` / ``LZMA`` chunks (no size in their header) are decoded once, by the
  codec ``stack_zarr_bounded.bounded_array`` puts in numcodecs' place: at most one byte past the
  chunk's size, and refused past it (here they were once decoded to bound them, then by numcodecs
  again: twice the work on every read);
* any other bytes-to-bytes codec, two compressors in a row, or (zarr v2) a compressor given as a filter,
  is refused before any chunk is read: its decoded size could not be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, RangeByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

__all__ = [
    "HEADED", "MAX_META_BYTES", "STREAMED", "ChunkCheck", "GuardedStore", "ZarrGuardError", "chunk_check"
]  # fmt: skip

MAX_META_BYTES = 16 * 1024 * 1024
"""Most bytes of one metadata file (``zarr.json``, ``.zarray``, ``.zattrs``, ...): abTEM's are a few kB."""
META_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}
OVERHEAD = 64 * 1024
"""Bytes a codec may add to a chunk (headers, an incompressible chunk stored with its framing)."""
_ZSTD_MAGIC = 0xFD2FB528
STREAMED = frozenset({"gzip", "zlib", "bz2", "lzma"})
"""Codecs with no decoded size in their header: bounded while decoded (``stack_zarr_bounded``)."""
HEADED = frozenset({"lz4", "blosc", "zstd"})
"""Codecs whose header states the decoded size: checked before numcodecs allocates it."""
_NEUTRAL_V3 = {"bytes", "transpose"}
_FILTERS_V3 = ("delta", "astype", "fixedscaleoffset", "quantize", "bitround")
_ARRAY_TO_ARRAY_V3 = {"numcodecs." + n for n in _FILTERS_V3}
"""zarr v3 filters (array to array, before the compressor): they change an item's width, not the count."""


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
        """Refuse a chunk whose header declares more than the chunk; a gzip / zlib / bz2 / lzma chunk is
        bounded while it is decoded, once (``stack_zarr_bounded``), not here."""
        self.header(data[:-4] if self.crc else data)

    def header(self, data: np.ndarray) -> None:
        """Refuse an LZ4 / Blosc / Zstd chunk (no CRC) whose header declares more than the chunk."""
        if self.codec in HEADED:
            declared = _declared(self.codec, data)
            if declared is None or declared > self.bound:
                said = "no size" if declared is None else f"{declared} bytes"
                raise ZarrGuardError(
                    f"a {self.codec} chunk declares {said}, the chunk holds {self.bound}; "
                    "not decoded (crafted?)"
                )


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


def chunk_check(arr: Any) -> ChunkCheck:
    """The check of ``arr``'s chunk files; ``ZarrGuardError`` for a pipeline whose decoded size cannot be
    checked (an unknown compressor, two in a row)."""
    meta = arr.metadata
    itemsize = np.dtype(arr.dtype).itemsize
    n = math.prod(int(c) for c in arr.chunks)  # a sharded array's inner chunks: what each codec decodes
    if meta.zarr_format == 2:
        comp = meta.compressor
        codec = None if comp is None else str(comp.codec_id)
        squeezed = [str(f.codec_id) for f in meta.filters or () if str(f.codec_id) in HEADED | STREAMED]
        if squeezed:  # a compressor run as a filter decodes to what its bytes say: unbounded (session 34)
            raise ZarrGuardError(f"a {squeezed[0]} filter: its decoded size cannot be checked; not read")
        configs = [f.get_config() for f in meta.filters or ()]
        return _known(ChunkCheck(codec, n * _widest(itemsize, configs)))
    codecs = [c.to_dict() for c in meta.codecs]
    inner = 0
    if codecs and codecs[-1]["name"] == "sharding_indexed":
        inner = math.prod(int(s) for s in arr.shards) // n
        codecs = list(codecs[-1].get("configuration", {}).get("codecs", []))
        codecs = [c if isinstance(c, dict) else c.to_dict() for c in codecs]
    filters = [dict(c.get("configuration") or {}) for c in codecs if c["name"] in _ARRAY_TO_ARRAY_V3]
    names = [str(c["name"]) for c in codecs if str(c["name"]) not in _NEUTRAL_V3 | _ARRAY_TO_ARRAY_V3]
    crc = bool(names) and names[-1] == "crc32c"
    names = names[:-1] if crc else names
    if len(names) > 1:
        raise ZarrGuardError(f"codecs {', '.join(names)} in a row: the decoded size cannot be checked")
    codec = names[0].removeprefix("numcodecs.") if names else None
    return _known(ChunkCheck(codec, n * _widest(itemsize, filters) if filters else n * itemsize, crc, inner))


def _widest(itemsize: int, filters: list[dict[str, Any]]) -> int:
    """Bytes an item may take between the filters and the compressor: its own, the widest dtype a
    filter names (``astype``, ``encode_dtype``), at least 8 when any filter is there (a filter of unknown
    kind may widen to a double). Why: the bound was 8 with a filter, so a complex128 store with a
    Shuffle or Delta filter (16-byte items) was refused as a bomb (session 34 review)."""
    if not filters:
        return itemsize
    widths = [itemsize, 8]
    for cfg in filters:
        for key in ("astype", "encode_dtype", "dtype"):
            with contextlib.suppress(KeyError, TypeError, ValueError):  # no dtype of that name
                widths.append(np.dtype(cfg[key]).itemsize)
    return max(widths)


def _known(check: ChunkCheck) -> ChunkCheck:
    if check.codec is not None and check.codec not in HEADED | STREAMED:
        known = ", ".join(sorted(HEADED | STREAMED))
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
        buf: Buffer | None
        if byte_range is None:
            data = await asyncio.to_thread(_read_at_most, path, limit + 1)  # in a thread, as LocalStore reads
            if len(data) > limit:
                raise ZarrGuardError(f"{key}: over {limit} bytes, more than it can hold; not read (crafted?)")
            buf = (prototype or default_buffer_prototype()).buffer.from_bytes(data)
        else:
            buf = await super().get(key, prototype, byte_range)
        # a shard's inner chunks are header-checked by ``stack_zarr_bounded.HeaderCheckedCodec`` as they
        # are decoded (read whole or by range): here a range may be the shard's index (index_location
        # "start": bytes 0 to 16 a chunk), no chunk, which a Zstd check refused (session 34 review)
        sharded = self.check is not None and self.check.inner
        if buf is not None and not meta and self.check is not None and not sharded and byte_range is None:
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
