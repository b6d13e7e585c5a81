"""A TIFF page's zlib or LZMA strips (or tiles) decoded within the bytes each holds, before tifffile's decode.

Why (session 36): tifffile decodes a zlib (8, 32946) or LZMA (34925) strip with ``zlib.decompress`` /
``lzma.decompress``, no bound on the output, then keeps the bytes its strip needs. A 1 MB TIFF of three
64 x 64 frames, one strip of them 1 GiB of zeros deflated, was read (exit 0) after a peak of 2.1 GB; an
LZMA strip of 163 kB did the same. Here each strip is decoded to at most one byte past what its strip
or tile holds (``segment_bytes``), in pieces of at most ``PIECE`` bytes, and refused past it.

Decoded once: a deflate or LZMA stream's decoded length is known only by decoding it (a deflate symbol
of one bit may stand for 258 bytes: the compressed size bounds nothing useful), and tifffile's decoder
takes no limit (its ``out`` argument is unused without imagecodecs). Counting each strip and then
letting tifffile decode it cost 88 % more time to read a zlib stack, 150 % an LZMA one. So
``read_page`` builds the page itself from the strips it decoded, for the layout nearly every stack has
(strips of one sample a pixel, whole bytes, no predictor or the horizontal one on integers: what
tifffile, libtiff and ImageJ write); any other page (tiles, a float predictor, a damaged stream) is
counted by ``inflation_problem`` and then decoded by tifffile, as before, reporting its own errors.
"""

from __future__ import annotations

import lzma
import math
import zlib
from typing import Any

import numpy as np

from sbd_stream.sources.stack_headers import StackError, lzma_memlimit

__all__ = ["BOUNDED", "inflation_problem", "read_page", "segment_bytes"]

ZLIB_CODES = frozenset({8, 32946})
"""TIFF's Compression for deflate: Adobe's 8 and the older 32946; tifffile decodes both with zlib."""
LZMA_CODE = 34925
BOUNDED = ZLIB_CODES | {LZMA_CODE}
"""The compressions whose strips are counted here."""
PIECE = 4 << 20
"""Most bytes one step of a decode asks for."""
WHOLE, DAMAGED, MEMORY = "whole", "damaged", "memory"
"""How a strip's decode ended (``_inflate``): its stream(s) to the end, an error or cut short, or an LZMA
stream asking more memory than a strip of its size needs."""


def segment_bytes(page: Any) -> int:
    """The most bytes one strip or tile of ``page`` holds decoded, as tifffile shapes it: a whole strip
    (RowsPerStrip rows, tifffile caps it at the image's length; the last strip may hold fewer and is
    allowed the whole, since tifffile keeps the bytes it needs) or a whole tile, of the samples stored
    together, at the bytes of the page's NumPy type (a packed 12-bit or 1-bit sample takes less). 0 for
    a size tag of 0, which tifffile divides by or calls an empty image before it decodes a byte: left
    to it, as its error says what is wrong."""
    kf = getattr(page, "keyframe", None) or page  # a TiffFrame is decoded as its key page's layout says
    samples = int(kf.samplesperpixel) if int(kf.planarconfig) == 1 else 1
    item = kf.dtype.itemsize if kf.dtype is not None else math.ceil(int(kf.bitspersample) / 8)
    if kf.is_tiled:
        size = int(kf.tiledepth) * int(kf.tilelength) * int(kf.tilewidth)
    else:
        size = min(int(kf.rowsperstrip), int(kf.imagelength)) * int(kf.imagewidth)
    return size * samples * max(1, int(item))


def read_page(fh: Any, page: Any, name: str) -> np.ndarray | None:
    """``page`` decoded, each zlib / LZMA strip to at most one byte past its size, as (planes, rows,
    width) of its native type; None for a layout or stream left to tifffile (``_plain``, a strip
    that does not decode whole). Raises ``StackError`` naming ``name`` (file and frame) for a strip
    that decodes to more than it holds."""
    kf = getattr(page, "keyframe", None) or page
    if not _plain(kf) or (bound := segment_bytes(page)) <= 0:
        return None
    length, width, dt = int(kf.imagelength), int(kf.imagewidth), np.dtype(kf.dtype)
    rps, planes = min(int(kf.rowsperstrip), length), int(kf.samplesperpixel)
    strips = math.ceil(length / rps)
    offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    if len(counts) != strips * planes or not all(counts):  # an empty strip: tifffile fills it
        return None
    row = width * dt.itemsize
    out = np.empty(planes * length * row, np.uint8)
    at = 0
    for j, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        need = min(rps, length - (j % strips) * rps) * row  # the last strip of a plane may hold fewer rows
        data, end = _inflate(_read(fh, offset, count), int(kf.compression), bound)
        if len(data) > bound or end == MEMORY:
            raise StackError(f"{name}: {_refusal(kf, j, count, bound, end)}")
        if end != WHOLE or len(data) < need:
            return None  # tifffile decodes it and says what is wrong
        out[at : at + need] = np.frombuffer(data, np.uint8, need)  # tifffile keeps these bytes too
        at += need
    arr = out.view(dt.newbyteorder(str(page.parent.byteorder))).reshape(planes, length, width)
    arr = arr.astype(dt.newbyteorder("="), copy=False)
    if int(kf.predictor) == 2:  # horizontal differencing: a running sum along each row, wrapping
        np.cumsum(arr, axis=-1, dtype=arr.dtype, out=arr)
    return arr


def _plain(kf: Any) -> bool:
    """The layout ``read_page`` builds as tifffile does: zlib / LZMA strips, one image deep, one sample
    a pixel or samples stored as planes, whole bytes a sample in MSB-first order, and no predictor or
    the horizontal one (2) on integers."""
    dt = kf.dtype
    return (
        int(kf.compression) in BOUNDED
        and not kf.is_tiled
        and dt is not None
        and int(kf.bitspersample) == 8 * np.dtype(dt).itemsize
        and int(getattr(kf, "imagedepth", 1)) == 1
        and (int(kf.samplesperpixel) == 1 or int(kf.planarconfig) == 2)
        and int(kf.fillorder) == 1
        and (int(kf.predictor) == 1 or (int(kf.predictor) == 2 and np.dtype(dt).kind in "iu"))
    )


def inflation_problem(fh: Any, page: Any, name: str) -> str | None:
    """Why a strip or tile of ``page`` (a zlib or LZMA one) decodes to more bytes than it holds, named
    by ``name`` (``page 3``, ``frame 12``), or None (uncompressed, another codec, or each strip within
    its size; a damaged stream too, which tifffile's own decode then reports). Each strip is decoded
    and dropped: for pages tifffile then decodes itself."""
    kf = getattr(page, "keyframe", None) or page
    code = int(getattr(kf, "compression", 1))
    if code not in BOUNDED or (bound := segment_bytes(page)) <= 0:
        return None
    for j, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=False)):
        if count:
            data, end = _inflate(_read(fh, offset, count), code, bound)
            if len(data) > bound or end == MEMORY:
                return f"{name}: {_refusal(kf, j, count, bound, end)}"
    return None


def _refusal(kf: Any, j: int, count: int, bound: int, end: str) -> str:
    kind = "tile" if kf.is_tiled else "strip"
    codec = "zlib" if int(kf.compression) in ZLIB_CODES else "LZMA"
    why = (
        f"asks liblzma for over {lzma_memlimit(bound)} bytes of memory, more than {bound} bytes need"
        if end == MEMORY
        else f"decodes to more than the {bound} bytes a {kind} holds"
    )
    return f"its {codec} {kind} {j} of {count} bytes {why}; not decoded (crafted?)"


def _read(fh: Any, offset: int, count: int) -> bytes:
    """A strip's bytes; a count past the end reads no more than the file holds (callers refuse it)."""
    fh.seek(offset)
    return bytes(fh.read(max(0, min(int(count), int(fh.size) - int(offset)))))


def _inflate(data: bytes, code: int, bound: int) -> tuple[bytes, str]:
    """(the bytes a zlib or LZMA strip decodes to, ``bound`` + 1 at most; how its decode ended)."""
    return _zlib(data, bound) if code in ZLIB_CODES else _lzma(data, bound)


def _zlib(data: bytes, bound: int) -> tuple[bytes, str]:
    """As ``zlib.decompress`` decodes (the first stream; what follows it ignored), to ``bound`` + 1."""
    d = zlib.decompressobj()
    parts: list[bytes] = []
    n, rest = 0, data
    try:
        while n <= bound:
            want = min(PIECE, bound + 1 - n)
            out = d.decompress(rest, want)
            parts.append(out)
            n += len(out)
            rest = d.unconsumed_tail
            if d.eof:
                return b"".join(parts), WHOLE
            if not rest and len(out) < want:
                return b"".join(parts), DAMAGED  # cut short
    except zlib.error:
        return b"".join(parts), DAMAGED
    return b"".join(parts), DAMAGED  # past the bound: the caller refuses it


def _lzma(data: bytes, bound: int) -> tuple[bytes, str]:
    """As ``lzma.decompress`` decodes (every stream after another too; from the second on, one that fails
    is ignored with what follows), to ``bound`` + 1, under the memory limit a strip of ``bound`` bytes
    needs: a later stream's dictionary, which ``stack_headers.lzma_problem`` does not reach, too."""
    done: list[bytes] = []  # the streams decoded whole
    n, rest = 0, data
    while rest:
        d = lzma.LZMADecompressor(lzma.FORMAT_AUTO, lzma_memlimit(bound))
        parts: list[bytes] = []
        try:
            out = d.decompress(rest, min(PIECE, bound + 1 - n))
            while True:
                parts.append(out)
                n += len(out)
                if n > bound:
                    return b"".join(done + parts), DAMAGED
                if d.eof or d.needs_input:
                    break
                out = d.decompress(b"", min(PIECE, bound + 1 - n))
        except lzma.LZMAError as e:
            if "Memory usage limit" in str(e):  # CPython's one message for LZMA_MEMLIMIT_ERROR
                return b"".join(done), MEMORY
            return b"".join(done), (WHOLE if done else DAMAGED)
        if not d.eof:
            return b"".join(done + parts), DAMAGED  # cut short
        done += parts
        rest = d.unused_data
    return b"".join(done), WHOLE
