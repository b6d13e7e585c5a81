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

import ctypes
import glob
import itertools
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from sbd_stream.protocol import ProtocolError

_U32 = struct.Struct(">I")
_scratch = threading.local()
_omp_lock = threading.Lock()
_omp_fns: list | None = None


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


def _decode_blocks(
    mv: memoryview, pos: int, sizes: Iterable[int], dest: memoryview, raw_if_equal: bool
) -> int:
    """The blocks at ``pos``, each of ``sizes`` bytes once decompressed, written one after another into
    ``dest`` (exactly ``sum(sizes)`` bytes); returns the position after the last one. ``sizes`` is
    lazy (``_sizes``): a peer's block of 1 byte must not make a list of one entry per byte up front.

    One loop with nothing but the checks in it (a K2 frame is ~3500 blocks of 8 KiB, and the Python
    work per block was half the decode): the declared size is checked against what is left before
    the block is sliced, LZ4's safe decoder gets a view of the payload (no copy; it takes any buffer)
    and our size, and its output length is checked before it is copied."""
    import lz4.block

    decompress, unpack, end, at = lz4.block.decompress, _U32.unpack_from, len(mv), 0
    try:
        for size in sizes:
            if pos + 4 > end:
                raise ProtocolError("decompress_failed", "the payload ends inside a block header")
            (n,) = unpack(mv, pos)
            pos += 4
            if n > end - pos:
                raise ProtocolError("decompress_failed", f"a block declares {n} bytes, {end - pos} are left")
            data = mv[pos : pos + n]
            pos += n
            part = data if raw_if_equal and n == size else decompress(data, uncompressed_size=size)
            if len(part) != size:
                raise ProtocolError("decompress_failed", f"got {len(part)} bytes, expected {size}")
            dest[at : at + size] = part
            at += size
    except (lz4.block.LZ4BlockError, ValueError) as e:
        raise ProtocolError("decompress_failed", str(e)[:80]) from None
    return pos


def _sizes(count: int, size: int, last: int) -> Iterable[int]:
    """``count`` blocks of ``size`` bytes then one of ``last`` (if not 0), without a list of them."""
    return itertools.chain(itertools.repeat(size, count), (last,) if last else ())


def _block_at(mv: memoryview, pos: int) -> memoryview:
    """The compressed bytes of the block whose header is at ``pos``, its declared size checked."""
    if pos + 4 > len(mv):
        raise ProtocolError("decompress_failed", "the payload ends inside a block header")
    (n,) = _U32.unpack_from(mv, pos)
    if n > len(mv) - pos - 4:
        raise ProtocolError("decompress_failed", f"a block declares {n} bytes, {len(mv) - pos - 4} are left")
    return mv[pos + 4 : pos + 4 + n]


def lz4_exact(data: bytes | memoryview, size: int) -> bytearray:
    """One raw LZ4 block by LZ4's safe decoder, ``size`` bytes out (ours, never the peer's), else a
    ProtocolError; also the stream v1 ``lz4<`` payload (``dectris_codec.decompress_lz4_block``). A
    bytearray: the arrays made on it are writable, as h5py's reads are, without another copy."""
    import lz4.block

    try:
        out = lz4.block.decompress(data, uncompressed_size=size, return_bytearray=True)
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
    if algo == "lz4":
        block = block_bytes or nbytes
        if nbytes <= block:  # one block (H5Z-LZ4's default is 1 GiB): decoded straight into the output
            data = _block_at(mv, 12)
            out: bytearray | np.ndarray = bytearray(data) if len(data) == nbytes else lz4_exact(data, nbytes)
        else:
            out = bytearray(nbytes)  # writable, as h5py's reads
            sizes = _sizes(nbytes // block, block, nbytes % block)
            _decode_blocks(mv, 12, sizes, memoryview(out), raw_if_equal=True)
    else:
        if nbytes % elem_size:
            raise ProtocolError("decompress_failed", f"{nbytes} bytes are no whole {elem_size}-byte elements")
        n = nbytes // elem_size
        block = block_bytes // elem_size if block_bytes else _default_block(elem_size)
        if block <= 0 or block % 8:
            raise ProtocolError("decompress_failed", f"block of {block} elements (not a multiple of 8)")
        last = (n % block) - (n % block) % 8
        sizes = _sizes(n // block, block * elem_size, last * elem_size)
        at = (n // block) * block * elem_size + last * elem_size
        shuffled = _shuffled_buffer(nbytes)
        pos = _decode_blocks(mv, 12, sizes, shuffled[:at], raw_if_equal=False)
        leftover = (n % 8) * elem_size
        if len(mv) - pos < leftover or at + leftover != nbytes:
            raise ProtocolError("decompress_failed", "the payload ends before its last elements")
        shuffled[at:] = mv[pos : pos + leftover]
        out = unshuffle(shuffled, elem_size, block)
    if len(out) != nbytes:
        raise ProtocolError("decompress_failed", f"got {len(out)} bytes, expected {nbytes}")
    return np.frombuffer(out, np.uint8) if isinstance(out, (bytes, bytearray)) else out


def _omp_threads_fns() -> list:
    """(get, set) of ``omp_{get_max,set_num}_threads`` of each OpenMP runtime ``bitshuffle`` may use:
    the one already global in the process (torch loads its libgomp so), the copy its wheel bundles."""
    global _omp_fns
    with _omp_lock:
        if _omp_fns is None:
            fns = []
            try:
                import bitshuffle

                libs = os.path.join(os.path.dirname(os.path.dirname(bitshuffle.__file__)), "bitshuffle.libs")
                names = [None, *sorted(glob.glob(os.path.join(libs, "libgomp*.so*")))]
            except ImportError:  # pragma: no cover - bitshuffle is a dependency
                names = []
            for name in names:
                try:
                    lib = ctypes.CDLL(name)
                    fns.append((lib.omp_get_max_threads, lib.omp_set_num_threads))
                except (OSError, AttributeError):
                    continue
            _omp_fns = fns
        return _omp_fns


@contextmanager
def _one_omp_thread() -> Iterator[None]:
    """bitshuffle's OpenMP held to this thread for one call, then the thread's setting restored.

    Measured on the shared 2-core machine (K2 uint16, 28 MB): the default team of 2 took 24-38 ms
    (median) with tails of 440 ms, one thread 10-22 ms: libgomp's team spins while its other thread
    waits for a busy core. Restored after, per thread (an OpenMP ICV), so a caller's torch, which
    sizes its own parallel regions from the same setting on a shared libgomp, is left as it was."""
    fns = _omp_threads_fns()
    before = [get() for get, _ in fns]
    for _, set_ in fns:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(fns, before, strict=True):
            set_(n)


def unshuffle(shuffled: bytes | memoryview, elem_size: int, block: int) -> np.ndarray:
    """The bit transpose undone, blocks as the filter made them (bitshuffle's own blocked rule)."""
    import bitshuffle

    arr = np.frombuffer(shuffled, f"<u{elem_size}")
    with _one_omp_thread():
        out = bitshuffle.bitunshuffle(arr, block)
    return np.ascontiguousarray(out).view(np.uint8).reshape(-1)
