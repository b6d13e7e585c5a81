"""Reading frames from HDF5 files without handing a damaged chunk to a decompressor that can crash.

Why (session 32): a recording, a DECTRIS file or any user's ``.h5`` whose frames are compressed with
bitshuffle-LZ4 (HDF5 filter 32008, what ``serve`` records by default) or H5Z-LZ4 (32004) is
decompressed, on an ordinary ``ds[i]``, by the filters ``hdf5plugin`` ships, and they use LZ4's
unchecked decoder and trust the block sizes in the chunk: one crafted or damaged chunk killed
``denoise``, ``replay --offline`` and ``export`` with SIGSEGV (exit 139) instead of an error. Every
frame read from an HDF5 file goes through :func:`safe_dataset`:

* no filter, or only libhdf5's own (gzip, shuffle, fletcher32, n-bit, scale-offset: they check their
  input): the h5py dataset itself, read by libhdf5 as before;
* exactly bitshuffle + LZ4, bitshuffle alone, or LZ4: a :class:`SafeChunks` that reads the chunks it
  needs raw (``read_direct_chunk``) and decodes them with the bounds-checked code the network path
  uses (``formats/framed_decode.py``: LZ4's safe decoder, our output size), honouring the per-chunk
  filter mask, the chunk layout (edge chunks, chunks of several frames or parts of one) and the fill
  value of chunks never written; the result is h5py's, byte for byte;
* a filter found to crash or hang on a damaged chunk (:data:`REFUSED`: the survey in
  docs/dectris.md) and that cannot be decoded here: an :class:`UnsafeChunks` naming it, before any read.

Filters not listed (another registered plugin) are left to libhdf5; an unavailable one fails there.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import numpy as np

from sbd_stream.formats.dectris_codec import check_framing
from sbd_stream.formats.framed_decode import decode_framed, unshuffle
from sbd_stream.protocol import ProtocolError

BITSHUFFLE, LZ4 = 32008, 32004
LIBHDF5_OWN = {1: "gzip", 2: "shuffle", 3: "fletcher32", 5: "n-bit", 6: "scale-offset"}
"""libhdf5's built-in filters: they check their input (a damaged chunk is an error, never a crash)."""
REFUSED = {
    32015: ("Zstd", "returned heap memory it never wrote as the frame"),
    307: ("BZip2", "hung"),
    32017: ("SZ", "crashed the process"),
    32024: ("SZ3", "crashed the process"),
    32028: ("SPERR", "crashed the process"),
}
"""hdf5plugin's filters (id: name, what their decoder did on a damaged chunk in the survey of session
32, docs/dectris.md) that no checked decoder here replaces: such frames are refused. Blosc, Blosc2,
FCIDECOMP, ZFP and HTJ2K only ever failed cleanly (or, lossy ZFP, decoded other numbers) there."""
_BSHUF_NONE, _BSHUF_LZ4 = 0, 2
_HINT = "not read: decompress the file first, e.g. h5repack -f NONE IN OUT"


class UnsafeChunks(OSError):
    """Frames that cannot be read safely: a refused filter, or a chunk that fails its checks (one line,
    no file name: the reader adds it). An ``OSError``, as h5py's own read errors, so every reader's
    handler of a damaged file says it."""


def _plan(ds: Any) -> tuple[str, int] | None:
    """("bslz4" | "bitshuffle" | "lz4", the bitshuffle block in elements) where ``ds``' chunks are read
    here, None where libhdf5 reads them; ``UnsafeChunks`` for a refused pipeline."""
    if getattr(ds, "is_virtual", False):
        _check_virtual(ds)
        return None
    if ds.chunks is None:
        return None
    dcpl = ds.id.get_create_plist()
    filters = [dcpl.get_filter(k)[:3] for k in range(dcpl.get_nfilters())]
    ids = [int(fid) for fid, _flags, _cd in filters]
    if all(fid in LIBHDF5_OWN for fid in ids):
        return None
    for fid in ids:
        if fid in REFUSED:
            name, did = REFUSED[fid]
            raise UnsafeChunks(
                f"its frames are compressed with the {name} HDF5 filter ({fid}), whose decoder {did} on a "
                "damaged chunk; " + _HINT
            )
    dt = ds.dtype
    if {BITSHUFFLE, LZ4} & set(ids) and len(ids) != 1:  # the filter would still decode: refused
        raise UnsafeChunks(f"its frames pass HDF5 filters {ids}: bitshuffle / LZ4 with others; " + _HINT)
    if ids[0] not in (BITSHUFFLE, LZ4):
        return None  # another plugin's pipeline: libhdf5's to read
    if dt.hasobject or dt.itemsize not in (1, 2, 4, 8) or dt.kind not in "uifcb" or dt.subdtype is not None:
        raise UnsafeChunks(f"its {dt} frames are compressed with filter {ids[0]}, for counts only; not read")
    cd = tuple(int(v) for v in filters[0][2])
    if ids[0] == LZ4:
        return "lz4", 0
    if len(cd) > 2 and cd[2] != dt.itemsize:
        raise UnsafeChunks(f"its bitshuffle filter states {cd[2]}-byte elements for {dt} frames; not read")
    block = cd[3] if len(cd) > 3 else 0
    comp = cd[4] if len(cd) > 4 else _BSHUF_NONE
    if comp not in (_BSHUF_NONE, _BSHUF_LZ4):
        raise UnsafeChunks(
            f"its frames are compressed with bitshuffle + compressor {comp} (zstd), whose decoder crashed "
            "the process on a damaged chunk; " + _HINT
        )
    return ("bslz4" if comp == _BSHUF_LZ4 else "bitshuffle"), block


def _check_virtual(ds: Any) -> None:
    """A virtual dataset is read by libhdf5 from its sources: refused where a source's filters are ones
    that can crash (it cannot be read chunk by chunk here); a source that cannot be opened is HDF5's."""
    import os

    import h5py

    base = os.path.dirname(ds.file.filename)
    for src in ds.virtual_sources():
        name = src.file_name if src.file_name != "." else ds.file.filename
        try:
            with h5py.File(os.path.join(base, name), "r") as f:
                sub = f.get(src.dset_name)
                plan = _plan(sub) if isinstance(sub, h5py.Dataset) and not sub.is_virtual else None
        except OSError as e:
            if isinstance(e, UnsafeChunks):
                raise UnsafeChunks(f"its virtual source {name}:{src.dset_name}: {e}") from None
            continue
        if plan is not None:
            raise UnsafeChunks(
                f"a virtual dataset whose source {name}:{src.dset_name} is {plan[0]}-compressed, which only "
                "its own dataset is read safely: give that file and dataset (--dataset)"
            )


def safe_dataset(ds: Any) -> Any:
    """``ds`` itself where libhdf5 reads its chunks safely, else a :class:`SafeChunks` over it;
    ``UnsafeChunks`` (one line, no file name) where neither can."""
    plan = _plan(ds)
    return ds if plan is None else SafeChunks(ds, *plan)


def read_safely(ds: Any, index: Any, where: str) -> Any:
    """``safe_dataset(ds)[index]``, its ``UnsafeChunks`` naming ``where`` (a file and dataset)."""
    try:
        return safe_dataset(ds)[index]
    except UnsafeChunks as e:
        raise UnsafeChunks(f"{where}: {e}; damaged?") from None


class SafeChunks:
    """An h5py chunked dataset read chunk by chunk through checked decoders: ``[index]`` (integers,
    slices of step >= 1, one list or array of indices, ``...``, ``()``) as h5py returns it. Anything
    else (attrs, name, file, chunks, external...) is the dataset's."""

    def __init__(self, ds: Any, algo: str, block: int) -> None:
        self.ds, self.algo, self.block = ds, algo, block
        self.dtype, self.chunks, self.ndim = ds.dtype, tuple(ds.chunks), len(ds.shape)
        self.chunk_nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        """The dataset's, as it is now (a live recording's grows in SWMR read mode)."""
        return tuple(self.ds.shape)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ds, name)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index: Any) -> Any:
        box, rel = _selection(index, self.shape)
        lo = [a for a, _ in box]
        whole = [(a % c == 0 and b - a == c) for (a, b), c in zip(box, self.chunks, strict=True)]
        if all(whole):  # exactly one chunk (a frame of a recording): its decoded array, no copy
            out = self._chunk(tuple(lo))
            return np.ascontiguousarray(_pick(out, rel))
        out = np.empty([b - a for a, b in box], self.dtype)
        if out.size:
            ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(box, self.chunks, strict=True)]
            for idx in itertools.product(*ranges):
                start = [i * c for i, c in zip(idx, self.chunks, strict=True)]
                chunk = self._chunk(tuple(start))
                src, dst = [], []
                for (a, b), s, c, low in zip(box, start, self.chunks, lo, strict=True):
                    x0, x1 = max(a, s), min(b, s + c)
                    src.append(slice(x0 - s, x1 - s))
                    dst.append(slice(x0 - low, x1 - low))
                out[tuple(dst)] = chunk[tuple(src)]
        res = _pick(out, rel)
        return np.ascontiguousarray(res) if isinstance(res, np.ndarray) else res

    def _chunk(self, offset: tuple[int, ...]) -> np.ndarray:
        """The chunk at ``offset``, decoded and checked; the fill value where it was never written."""
        info = self.ds.id.get_chunk_info_by_coord(offset)
        if info.byte_offset is None:  # never written (HDF5 would give the fill value)
            fill = self.ds.fillvalue
            return np.full(self.chunks, fill if fill is not None else 0, self.dtype)
        mask, blob = self.ds.id.read_direct_chunk(offset)
        try:
            if mask & 1 or self.algo == "bitshuffle":  # stored as is / bit-transposed, not compressed
                if len(blob) != self.chunk_nbytes:
                    raise ProtocolError("bad_blob", f"{len(blob)} bytes, {self.chunk_nbytes} expected")
                raw = blob if mask & 1 else unshuffle(blob, self.dtype.itemsize, self._block())
            else:
                elem = self.dtype.itemsize if self.algo == "bslz4" else 1
                check_framing(blob, self.chunk_nbytes, elem)
                raw = decode_framed(blob, self.algo, self.dtype.itemsize, self.chunk_nbytes)
        except ProtocolError as e:
            raise UnsafeChunks(f"chunk {offset} cannot be decoded: {e}") from None
        arr = np.frombuffer(raw, np.uint8) if not isinstance(raw, np.ndarray) else raw
        if not arr.flags.writeable:  # lz4's bytes: h5py's arrays are writable, and torch wants them so
            arr = arr.copy()
        return arr.view(self.dtype).reshape(self.chunks)

    def _block(self) -> int:
        """bitshuffle's block in elements (0 in the filter's settings: its default)."""
        if self.block:
            return self.block
        return max(128, (8192 // self.dtype.itemsize) // 8 * 8)


def _selection(index: Any, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], tuple[Any, ...]]:
    """``index`` as a bounding box [lo, hi) per axis and the index of the result within that box."""
    idx = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in idx):
        k = next(n for n, i in enumerate(idx) if i is Ellipsis)
        idx = idx[:k] + (slice(None),) * (len(shape) - len(idx) + 1) + idx[k + 1 :]
    if len(idx) > len(shape):
        raise IndexError(f"{len(idx)} indices for a {len(shape)}-D dataset")
    idx = idx + (slice(None),) * (len(shape) - len(idx))
    box: list[tuple[int, int]] = []
    rel: list[slice | int | np.ndarray] = []
    for i, n in zip(idx, shape, strict=True):
        if isinstance(i, slice):
            r = range(*i.indices(n))
            if r.step < 1:
                raise ValueError("step must be >= 1 (as h5py's)")
            a, b = (r.start, r[-1] + 1) if len(r) else (0, 0)
            box.append((a, b))
            rel.append(slice(0, b - a, r.step))
        elif isinstance(i, (int, np.integer)):
            k = operator.index(i)
            if not -n <= k < n:
                raise IndexError(f"index {k} out of range for an axis of {n}")
            k %= n
            box.append((k, k + 1))
            rel.append(0)
        else:
            arr = np.asarray(i)
            if arr.dtype == bool:
                arr = np.flatnonzero(arr)
            arr = arr.astype(np.int64).reshape(-1)
            if arr.size and not (-n <= arr.min() and arr.max() < n):
                raise IndexError(f"an index out of range for an axis of {n}")
            arr %= max(n, 1)
            a, b = (int(arr.min()), int(arr.max()) + 1) if arr.size else (0, 0)
            box.append((a, b))
            rel.append(arr - a)
    return box, tuple(rel)


def _pick(out: np.ndarray, rel: tuple[Any, ...]) -> Any:
    """``out[rel]`` with h5py's axis order: numpy moves the axis of a list or mask to the front when an
    integer and it are apart (``[1, :, [0, 2]]``: (2, H) where h5py gives (H, 2)), so there the integers
    are taken as one-long slices and their axes squeezed after (one list at most, as h5py allows)."""
    ints = [k for k, r in enumerate(rel) if not isinstance(r, (slice, np.ndarray))]
    if not ints or not any(isinstance(r, np.ndarray) for r in rel):
        return out[rel]
    sliced = tuple(slice(r, r + 1) if k in ints else r for k, r in enumerate(rel))
    return np.squeeze(out[sliced], axis=tuple(ints))
