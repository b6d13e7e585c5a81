"""Decompression of DECTRIS payloads: bitshuffle-LZ4 and LZ4, checked before anything is allocated.

DECTRIS frames arrive compressed with the HDF5 filter framing (a 12-byte big-endian header: total
uncompressed size, block size) or, in stream v1 ``lz4<``, as one raw LZ4 block. The declared size is
compared with the size the frame header implies *before* decompressing, because a decompressor sizes
its output from that field and a hostile or corrupt 8-byte number would otherwise allocate exabytes.

Codecs come from maintained libraries, never hand-written: DECTRIS's own ``dectris-compression``
when it is installed (it has no wheels and takes minutes to compile, so it is optional), otherwise
the bitshuffle / LZ4 HDF5 filters that ``hdf5plugin`` ships, driven through an in-memory HDF5 file
(``write_direct_chunk`` + read), and ``lz4.block`` for raw blocks.
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Any

import numpy as np

from sbd_stream.formats.framed_decode import decode_framed, lz4_exact
from sbd_stream.protocol import ProtocolError

HEADER = struct.Struct(">QI")  # HDF5 bitshuffle / lz4 filter framing: total bytes, block bytes
MAX_BLOCK_BYTES = 1 << 30  # the LZ4 filter's own limit; bitshuffle blocks are ~8 kB

try:  # pragma: no cover - depends on the optional compiled package
    from dectris.compression import decompress as _dectris_decompress
except ImportError:  # pragma: no cover
    _dectris_decompress = None

try:  # the bitshuffle package's own compressor: no h5py (and so no h5py lock) in the way
    import bitshuffle as _bitshuffle
except ImportError:  # pragma: no cover - optional; hdf5plugin's filter through h5py is the fallback
    _bitshuffle = None

BSHUF_TARGET_BLOCK_BYTES = 8192  # the HDF5 filter's default block (bshuf_default_block_size)
_omp = threading.local()


def _one_omp_thread() -> None:
    """Make ``bitshuffle``'s OpenMP use one thread when called from this thread.

    The recorder's compressor pool is the parallelism (``bitshuffle`` releases the GIL); an OpenMP
    team per call on top of it oversubscribes the cores, and libgomp's spinning teams then starve
    each other (measured on 2 cores with torch loaded: 6 K2 uint16 frames/s instead of 65). The
    setting is per thread (an OpenMP ICV), so it is made once in each thread that compresses; the
    recorder compresses only on its pool's threads, never on a thread that runs torch.
    """
    if getattr(_omp, "done", False) or _bitshuffle is None:
        return
    _omp.done = True
    import ctypes
    import glob
    import os

    # the OpenMP runtime bitshuffle's calls bind to: one already global in the process (torch loads
    # its own libgomp so), else the copy its wheel bundles; setting it on both is harmless
    libs = os.path.join(os.path.dirname(os.path.dirname(_bitshuffle.__file__)), "bitshuffle.libs")
    for name in [None, *sorted(glob.glob(os.path.join(libs, "libgomp*.so*")))]:
        try:
            ctypes.CDLL(name).omp_set_num_threads(1)
        except (OSError, AttributeError):
            continue


def backends() -> list[str]:
    """Codec backends usable here, preferred first."""
    return (["dectris"] if _dectris_decompress is not None else []) + ["hdf5plugin"]


def check_framing(blob: memoryview | bytes, expected_nbytes: int, elem_size: int) -> int:
    """Validate the 12-byte filter header against the frame header; returns the block size in bytes."""
    if len(blob) < HEADER.size:
        raise ProtocolError("bad_blob", f"{len(blob)} bytes is shorter than the 12-byte header")
    total, block = HEADER.unpack_from(blob, 0)
    if total != expected_nbytes:
        raise ProtocolError("bad_blob", f"declares {total} bytes, the header implies {expected_nbytes}")
    if block > MAX_BLOCK_BYTES or (block and block % elem_size):
        raise ProtocolError("bad_blob", f"block size {block}")
    return int(block)


class _H5Codec:
    """One in-memory HDF5 dataset per (filter, dtype, length): the chunk goes in raw, comes out decoded.

    h5py serialises all HDF5 calls behind one lock, so a lock here costs nothing and keeps the cache
    consistent across threads.

    The scratch file is HDF5's own in-memory driver (``core``, no backing store), not a Python file
    object, and it is closed at exit: a file on a Python object still open when the HDF5 library shut
    down at process exit was flushed through h5py's write callback into an interpreter already gone,
    and the process died with SIGSEGV after its work was done (audit 26: the test suite exited 139
    after every test passed, 3 of 3 runs; any process that decoded a DECTRIS frame could).
    """

    def __init__(self) -> None:
        import atexit
        import uuid

        import h5py

        name = f"sbd-dectris-codec-{uuid.uuid4().hex}.h5"  # never on disk; unique per codec
        self._f = h5py.File(name, "w", driver="core", backing_store=False)
        self._ds: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        """Close the scratch file (idempotent): before the interpreter finalises, not after."""
        with self._lock:
            self._ds.clear()
            if self._f.id.valid:
                self._f.close()

    def _dataset(self, algo: str, elem_size: int, n: int) -> Any:
        key = (algo, elem_size, n)
        ds = self._ds.get(key)
        if ds is None:
            import hdf5plugin

            comp = hdf5plugin.Bitshuffle(cname="lz4") if algo == "bslz4" else hdf5plugin.LZ4()
            if len(self._ds) > 16:  # frame sizes rarely change; don't grow without bound
                for k in list(self._ds):
                    del self._f[f"{k[0]}_{k[1]}_{k[2]}"]
                self._ds.clear()
            ds = self._f.create_dataset(
                f"{algo}_{elem_size}_{n}", shape=(1, n), chunks=(1, n), dtype=f"<u{elem_size}", **comp
            )
            self._ds[key] = ds
        return ds

    def decode(self, blob: bytes | memoryview, algo: str, elem_size: int, nbytes: int) -> np.ndarray:
        n = nbytes // elem_size
        out = np.empty((1, n), f"<u{elem_size}")
        with self._lock:
            ds = self._dataset(algo, elem_size, n)
            ds.id.write_direct_chunk((0, 0), bytes(blob))
            ds.read_direct(out)
        return out.reshape(-1).view(np.uint8)


_h5: _H5Codec | None = None
_h5_lock = threading.Lock()


def _h5codec() -> _H5Codec:
    global _h5
    with _h5_lock:
        if _h5 is None:
            _h5 = _H5Codec()
        return _h5


def decompress_framed(
    blob: bytes | memoryview, algo: str, elem_size: int, nbytes: int, backend: str | None = None
) -> np.ndarray:
    """bslz4 or lz4 with HDF5 framing -> ``nbytes`` uint8; every failure is a ProtocolError."""
    if algo not in ("bslz4", "lz4"):
        raise ProtocolError("bad_encoding", algo)
    if elem_size not in (1, 2, 4, 8):
        raise ProtocolError("bad_encoding", f"element size {elem_size}")
    check_framing(blob, nbytes, elem_size if algo == "bslz4" else 1)
    backend = backend or backends()[0]
    try:
        if backend == "dectris" and _dectris_decompress is not None:
            out = np.frombuffer(_dectris_decompress(blob, algo, elem_size=elem_size), np.uint8)
        elif backend in ("dectris", "hdf5plugin"):
            # bounds-checked blocks (formats/framed_decode.py), the filter's output byte for byte: the
            # HDF5 filters' unchecked LZ4 decoder crashed the process on a crafted block (SIGSEGV)
            out = decode_framed(blob, algo, elem_size, nbytes)
        else:
            raise ValueError(f"unknown backend {backend!r}")
    except ProtocolError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError) as exc:  # h5py reports filter errors as OSError
        raise ProtocolError("decompress_failed", str(exc)[:80]) from exc
    if out.nbytes != nbytes:
        raise ProtocolError("decompress_failed", f"got {out.nbytes} bytes, expected {nbytes}")
    return out


def decompress_lz4_block(blob: bytes | memoryview, nbytes: int) -> np.ndarray:
    """Raw LZ4 block (stream v1 ``lz4<``): the output size comes from the frame header, not the peer."""
    return np.frombuffer(lz4_exact(blob, nbytes), np.uint8)


# --- compression: the recorder's compressor pool (sinks/recorder.py), emulators, tests, benchmarks ---


def compress_backends() -> list[str]:
    """Backends of :func:`compress_framed` usable here, preferred first."""
    return (["bitshuffle"] if _bitshuffle is not None else []) + ["hdf5plugin"]


def _default_block(elem_size: int) -> int:
    """Elements per bitshuffle block as the HDF5 filter picks them (block size 0 in cd_values)."""
    return max(128, (BSHUF_TARGET_BLOCK_BYTES // elem_size) // 8 * 8)


def compress_framed(array: np.ndarray, algo: str = "bslz4", backend: str | None = None) -> bytes:
    """Compress one frame exactly as the HDF5 filter (and so a DECTRIS detector) frames it.

    ``bslz4`` goes through the ``bitshuffle`` package when it is installed (byte-identical to the
    filter's chunk, and 2-3x faster than driving hdf5plugin's filter through h5py), else through an
    in-memory HDF5 file. The recorder's compressor pool (sinks/recorder.py) uses this.
    """
    import h5py
    import hdf5plugin

    arr = np.ascontiguousarray(array)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    backend = backend or compress_backends()[0]
    if algo == "bslz4" and backend == "bitshuffle" and _bitshuffle is not None and arr.size:
        _one_omp_thread()
        block = _default_block(arr.dtype.itemsize)
        body = _bitshuffle.compress_lz4(arr.reshape(-1), block)
        return b"".join((HEADER.pack(arr.nbytes, block * arr.dtype.itemsize), body))  # one copy
    flat = arr.reshape(1, -1)
    if algo == "lz4":
        flat = flat.view(np.uint8)
    comp = hdf5plugin.Bitshuffle(cname="lz4") if algo == "bslz4" else hdf5plugin.LZ4()
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=flat, chunks=flat.shape, **comp)
        _mask, chunk = ds.id.read_direct_chunk((0, 0))
    return bytes(chunk)


def compress_lz4_block(array: np.ndarray) -> bytes:
    import lz4.block

    arr = np.ascontiguousarray(array)
    return lz4.block.compress(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(), store_size=False)


def append_chunk(dset: Any, chunk: bytes | memoryview) -> int:
    """Append one frame to a (N, H, W) dataset chunked (1, H, W) with the bitshuffle-LZ4 filter,
    storing the detector's chunk as it came: no decompress / recompress (see docs/dectris.md).

    Only valid when the dataset's filter pipeline is exactly HDF5 bitshuffle + LZ4 (``hdf5plugin.
    Bitshuffle(cname="lz4")``) and its dtype has the chunk's element size; the caller checks that.
    """
    i = int(dset.shape[0])
    dset.resize(i + 1, axis=0)
    dset.id.write_direct_chunk((i, 0, 0), bytes(chunk))
    return i
