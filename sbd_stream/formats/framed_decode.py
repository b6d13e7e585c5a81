"""HDF5-framed bitshuffle-LZ4 and LZ4 chunks (DECTRIS ``bslz4`` / ``lz4``) decoded with bounds checks.

Why (CI of session 31): a fuzzed DECTRIS v1 ``bs16-lz4<`` payload killed the test process with SIGSEGV
inside the HDF5 filter's read (``_H5Codec.decode``): the bitshuffle and H5Z-LZ4 filters decompress with
LZ4's unchecked decoder, so a crafted block from the network could crash the whole service, whatever
our checks of the 12-byte header said. Here every block is decompressed by ``lz4.block.decompress``
(LZ4's safe decoder, the output size given, never the peer's) after its declared size is checked
against what is left of the payload, and the bit transpose is ``bitshuffle.bitunshuffle`` on a buffer
of exactly the frame's size. The output is the filter's, byte for byte
(tests/unit/test_framed_decode.py compares both on valid chunks of every block layout).

Formats (the filters' own): 8-byte big-endian uncompressed size, 4-byte big-endian block size in
bytes, then blocks, each a 4-byte big-endian compressed size and its bytes.
- bslz4 (bitshuffle): blocks of ``block`` bytes (0: bitshuffle's default, 8192 bytes rounded to 8
  elements, at least 128 elements), then a last block of the remaining elements rounded down to a
  multiple of 8, each LZ4-compressed after its bits were transposed; the last ``n % 8`` elements raw.
- lz4 (H5Z-LZ4): ``ceil(size / block)`` blocks, the last one short; a block whose compressed size
  equals its size is stored raw.
"""

from __future__ import annotations

import struct
import threading

import numpy as np

from sbd_stream.protocol import ProtocolError

_U32 = struct.Struct(">I")
_scratch = threading.local()


def _shuffled_buffer(size: int) -> memoryview:
    """This thread's reused buffer for a chunk's bit-transposed bytes (a K2 frame is 28 MB: a fresh
    one each frame cost ~20 ms of page faults), at least ``size`` bytes; never handed out."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(size)
    return memoryview(buf)[:size]


def _default_block(elem_size: int) -> int:
    """bitshuffle's ``bshuf_default_block_size`` in elements."""
    return max(128, (8192 // elem_size) // 8 * 8)


def _block(mv: memoryview, pos: int, size: int, raw_if_equal: bool) -> tuple[bytearray, int]:
    """One block of ``size`` uncompressed bytes at ``pos``: (its bytes, the next position)."""
    if pos + 4 > len(mv):
        raise ProtocolError("decompress_failed", "the payload ends inside a block header")
    (n,) = _U32.unpack_from(mv, pos)
    pos += 4
    if n > len(mv) - pos:
        raise ProtocolError("decompress_failed", f"a block declares {n} bytes, {len(mv) - pos} are left")
    data = mv[pos : pos + n]
    if raw_if_equal and n == size:
        return bytearray(data), pos + n
    return lz4_exact(data, size), pos + n


def lz4_exact(data: bytes | memoryview, size: int) -> bytearray:
    """One raw LZ4 block by LZ4's safe decoder, ``size`` bytes out (ours, never the peer's), else a
    ProtocolError; also the stream v1 ``lz4<`` payload (``dectris_codec.decompress_lz4_block``). A
    bytearray: the arrays made on it are writable, as h5py's reads are, without another copy."""
    import lz4.block

    try:
        out = lz4.block.decompress(bytes(data), uncompressed_size=size, return_bytearray=True)
    except (lz4.block.LZ4BlockError, ValueError) as e:
        raise ProtocolError("decompress_failed", str(e)[:80]) from None
    if len(out) != size:
        raise ProtocolError("decompress_failed", f"got {len(out)} bytes, expected {size}")
    return out


def decode_framed(blob: bytes | memoryview, algo: str, elem_size: int, nbytes: int) -> np.ndarray:
    """``nbytes`` uint8 from an HDF5-framed ``bslz4`` or ``lz4`` chunk; every failure a ProtocolError.

    The caller has checked the 12-byte header (``dectris_codec.check_framing``: the declared size is
    ``nbytes``, the block size a multiple of the element size)."""
    mv = memoryview(blob).cast("B")
    (block_bytes,) = _U32.unpack_from(mv, 8)
    pos, parts = 12, []
    if algo == "lz4":
        block = block_bytes or nbytes
        for start in range(0, nbytes, block):
            part, pos = _block(mv, pos, min(block, nbytes - start), raw_if_equal=True)
            parts.append(part)
        out = parts[0] if len(parts) == 1 else bytearray().join(parts)  # writable, as h5py's reads
    else:
        if nbytes % elem_size:
            raise ProtocolError("decompress_failed", f"{nbytes} bytes are no whole {elem_size}-byte elements")
        n = nbytes // elem_size
        block = block_bytes // elem_size if block_bytes else _default_block(elem_size)
        if block <= 0 or block % 8:
            raise ProtocolError("decompress_failed", f"block of {block} elements (not a multiple of 8)")
        sizes = [block] * (n // block)
        last = (n % block) - (n % block) % 8
        if last:
            sizes.append(last)
        shuffled, at = _shuffled_buffer(nbytes), 0
        for size in sizes:
            part, pos = _block(mv, pos, size * elem_size, raw_if_equal=False)
            shuffled[at : at + len(part)] = part
            at += len(part)
        leftover = (n % 8) * elem_size
        if len(mv) - pos < leftover or at + leftover != nbytes:
            raise ProtocolError("decompress_failed", "the payload ends before its last elements")
        shuffled[at:] = mv[pos : pos + leftover]
        pos += leftover
        out = unshuffle(shuffled, elem_size, block)
    if len(out) != nbytes:
        raise ProtocolError("decompress_failed", f"got {len(out)} bytes, expected {nbytes}")
    return np.frombuffer(out, np.uint8) if isinstance(out, (bytes, bytearray)) else out


def unshuffle(shuffled: bytes | memoryview, elem_size: int, block: int) -> np.ndarray:
    """The bit transpose undone, blocks as the filter made them (bitshuffle's own blocked rule)."""
    import bitshuffle

    arr = np.frombuffer(shuffled, f"<u{elem_size}")
    return np.ascontiguousarray(bitshuffle.bitunshuffle(arr, block)).view(np.uint8).reshape(-1)
