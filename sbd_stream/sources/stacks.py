"""Reading stacks of counted frames from files and writing denoised stacks, for offline ``denoise``.

Inputs are read lazily (h5py slices, NPY and MRC frames by explicit reads: ``RawFrames``, TIFFs
memory-mapped or page by page: ``stack_tiff.py``) so a recording larger than memory streams through;
which HDF5 dataset holds the frames, links followed, is ``stack_hdf5.py``'s. Output goes to a
temporary name and is renamed only when complete, so an interrupted run never leaves a file that
looks finished; a failed one leaves no temporary file either (``atomic_h5``, ``discard_h5``).

What a file declares is checked before anything is mapped or read (``stack_headers.py``,
``formats/limits.py``): frame sides 1 to 16384, a frame within the wire encoder's payload, at most
10^9 frames, and, for an uncompressed layout, no more bytes than the file holds; an HDF5 dataset whose
file stores far fewer frames than it declares is refused (``limits.unstored_problem``). A crafted header
is one ``StackError`` line, never an allocation of what it claims.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - registers bitshuffle-LZ4 for reading: recordings are a valid input
import numpy as np

from sbd_stream.formats.compression import filter_args
from sbd_stream.formats.hdf5_read import h5_reason, open_read
from sbd_stream.formats.limits import (
    count_problem,
    external_problem,
    frame_problem,
    sampling_attrs,
    unstored_problem,
)
from sbd_stream.formats.recording import SAMPLING_ATTRS
from sbd_stream.formats.safe_chunks import UnsafeChunks, safe_dataset
from sbd_stream.sources.stack_dm import DM_SUFFIXES, open_dm
from sbd_stream.sources.stack_emd import emd_frames
from sbd_stream.sources.stack_hdf5 import DEFAULT_H5_DATASETS, GuardedFrames, dataset_names, guess_dataset
from sbd_stream.sources.stack_headers import (
    NPY_MAX_HEADER,
    StackError,
    channel_last_note,
    check_dtype,
    npy_declared,
)
from sbd_stream.sources.stack_mrc import open_mrc
from sbd_stream.sources.stack_raw import RawFrames
from sbd_stream.sources.stack_tiff import LENGTH_UNITS_A, open_tiff
from sbd_stream.sources.stack_zarr import is_zarr_store, open_zarr

__all__ = [
    "DEFAULT_H5_DATASETS", "HDF5_SUFFIXES", "LENGTH_UNITS_A", "SUPPORTED_SUFFIXES", "FrameStack",
    "RawFrames", "StackError", "atomic_h5", "create_output", "discard_h5", "h5_text", "let_go_h5",
    "not_a_file", "open_stack",
]  # fmt: skip

log = logging.getLogger(__name__)

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".nxs", ".hspy", ".emd"}
"""HDF5 files by their name (``.hspy``: HyperSpy's, frames at ``/Experiments/<title>/data``; ``.emd``:
Velox's or Berkeley EMD's layout, ``stack_emd.py``)."""
SUPPORTED_SUFFIXES = HDF5_SUFFIXES | DM_SUFFIXES | {".npy", ".tif", ".tiff", ".mrc", ".mrcs", ".zarr"}
SUPPORTED_TEXT = ".h5/.hdf5/.nxs/.hspy/.emd, .npy, .tif/.tiff, .mrc/.mrcs, .dm3/.dm4 or a .zarr folder"
"""The supported types as an error message lists them."""


@dataclass
class FrameStack:
    """A lazily indexable (N, H, W) stack; ``frames[i:j]`` returns a NumPy array."""

    frames: Any
    source: str
    closer: Any = None
    sampling: dict[str, float] = field(default_factory=dict)  # pixel_size_A, dose_e_per_A2 | counts_per_px

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.frames.dtype)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        fresh = isinstance(self.frames, RawFrames)  # its reads are new arrays already
        for i in range(0, self.shape[0], size):
            batch = self.frames[i : i + size]
            yield batch if fresh else np.array(batch)  # a writable copy: torch refuses read-only memory

    def close(self) -> None:
        if self.closer is not None:
            self.closer()


def _check(arr: Any, source: str) -> Any:
    """``arr`` as a (frames, H, W) stack, once its dtype, frame size and frame count are usable (an HDF5
    dataset declaring 2 x 200000 x 200000 or 10^12 frames is refused here, before any read)."""
    dt = np.dtype(arr.dtype)
    try:
        check_dtype(dt)
    except ValueError as e:
        raise StackError(f"{source}: {e}") from None
    if (problem := external_problem(arr, source)) is not None:  # bytes of any file, read by path
        raise StackError(problem)
    if len(arr.shape) == 2:
        arr = arr[None] if isinstance(arr, np.ndarray) else _Single(arr)
    if len(arr.shape) != 3:
        raise StackError(f"{source}: expected a (frames, height, width) stack, got shape {tuple(arr.shape)}")
    n, h, w = arr.shape
    if n == 0 or h == 0 or w == 0:
        raise StackError(f"{source}: the stack is empty (shape {tuple(arr.shape)})")
    if (problem := frame_problem((h, w), dt.itemsize) or count_problem(n)) is not None:
        raise StackError(f"{source}: {problem}")
    return arr


class _Single:
    """A 2-D h5py dataset seen as a one-frame stack without reading it."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self.shape = (1, *ds.shape)
        self.dtype = ds.dtype

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.ds[()])[None][s]  # ds[()]: the whole of an h5py dataset or a zarr array


def open_stack(path: Path, dataset: str | None = None, warn: bool = True) -> FrameStack:
    """Open an HDF5 (EMD), NPY, TIFF, MRC, DM3 / DM4 stack or a zarr store (a folder: abTEM's ``to_zarr``);
    ``dataset`` names the HDF5 dataset (or zarr array) when it isn't obvious.

    The pixel size a TIFF (ImageJ ``unit`` + resolution tags, as ``sbd-stream export`` writes them) or
    an MRC header (``voxel_size``) states is read into ``sampling`` like HDF5 attributes, so a file
    exported and denoised again keeps its sampling instead of silently taking the paper's. A
    ``dataset`` for a file that has none (TIFF, NPY, MRC) is refused: ``-d no/such/dataset`` on an NPY
    was ignored without a word. ``warn=False``: no warning about the layout (``channel_last_note``),
    for a Dask worker's reopening of a file the client has opened and warned about already.
    """
    if not path.exists():
        raise StackError(f"{path}: no such file")
    suffix = path.suffix.lower()
    zarr_store = path.is_dir() and (suffix == ".zarr" or is_zarr_store(path))  # by name or metadata
    if (why := not_a_file(path)) is not None:
        raise StackError(f"{path}: {why}")
    if suffix == ".zarr" and not zarr_store:
        raise StackError(f"{path}: a .zarr store is a folder (zip stores are not read: unzip it)")
    if suffix not in SUPPORTED_SUFFIXES and not zarr_store:
        raise StackError(f"{path}: unsupported file type '{suffix}' (use {SUPPORTED_TEXT})")
    if zarr_store:
        suffix = ".zarr"
    if dataset is not None and suffix not in HDF5_SUFFIXES | {".zarr"}:
        raise StackError(
            f"{path}: --dataset {dataset!r} names an HDF5 dataset, and a {suffix} file has none: leave "
            "--dataset out"
        )
    try:
        stack = _open(path, suffix, dataset)
    except (OverflowError, MemoryError) as e:  # a size no check above foresaw: still one line
        raise StackError(
            f"{path}: declares sizes this machine cannot map or hold ({type(e).__name__})"
        ) from None
    if warn and (note := channel_last_note(stack.shape)) is not None:
        log.warning("%s: %s", stack.source, note)
    return stack


def not_a_file(path: Path) -> str | None:
    """Why ``path`` (which exists) is no file to read frames from, or None for a regular file.

    Why: a FIFO named like a stack (``mkfifo in.h5``) blocked forever in h5py's open, waiting for a
    writer; a socket or a device is no stack either. Refused before anything opens it. A zarr store
    (abTEM's ``to_zarr``) is a folder and an input: not refused here (``stack_zarr.is_zarr_store``)."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode) and (path.suffix.lower() == ".zarr" or is_zarr_store(path)):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder; name a file (a zarr store is read when it holds zarr.json, .zarray or .zgroup)"
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"is {kind}, not a regular file; name the stack's file (copy a stream into one first)"


def _open(path: Path, suffix: str, dataset: str | None) -> FrameStack:
    if suffix in {".mrc", ".mrcs"}:
        return _open_mrc(path)
    if suffix in DM_SUFFIXES:
        return _open_mrc(path, open_dm)
    if suffix == ".zarr":
        frames, where, sampling = open_zarr(path, dataset)
        return FrameStack(_check(frames, where), where, None, sampling)
    if suffix == ".npy":
        try:
            shape, dt = npy_declared(path)  # the header's shape against the limits and the file's size, first
            offset, fortran = _npy_layout(path)
            if fortran:  # frames not contiguous in the file (rare): mapped, as before
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                return FrameStack(_check(arr, str(path)), str(path))
        except ValueError as e:
            raise StackError(f"{path}: {e}") from None
        raw = RawFrames(path, offset, shape, dt)
        try:
            return FrameStack(_check(raw, str(path)), str(path), raw.close)
        except StackError:
            raw.close()
            raise
    if suffix in {".tif", ".tiff"}:
        frames, sampling, closer = open_tiff(path)
        try:
            return FrameStack(_check(frames, str(path)), str(path), closer, sampling)
        except StackError:
            if closer is not None:
                closer()
            raise
    try:
        f = open_read(path)  # SWMR read only where a writer has it open, with a bounded retry
    except OSError as e:
        raise StackError(f"{path}: not a readable HDF5 file ({h5_reason(e)})") from e
    try:
        return _open_h5(f, path, dataset)
    except (RuntimeError, KeyError, OSError) as e:  # a damaged file's metadata (checksum, link, header)
        why = h5_reason(e)
        raise StackError(f"{path}: not a readable HDF5 file ({why}; cut short or damaged?)") from None


def _open_h5(f: h5py.File, path: Path, dataset: str | None) -> FrameStack:
    linked: h5py.File | None = None
    name = ""
    try:
        emd = emd_frames(f, path, dataset) if path.suffix.lower() == ".emd" else None
        if emd is not None:  # Velox (frames last) or Berkeley EMD: its own layout and pixel size
            name, frames, sampling = emd
            where = f"{path}:{name}"
            return FrameStack(GuardedFrames(_check(frames, where), where), where, lambda: _close(f), sampling)
        name = dataset or guess_dataset(f, path)
        if not isinstance(f.get(name), h5py.Dataset):
            known = ", ".join(dataset_names(f)) or "none"
            raise StackError(f"{path}: no dataset '{name}' (datasets: {known})")
        where, ds = f"{path}:{name}", f[name]
        linked = ds.file if ds.file.id != f.id else None  # behind an external link: its own file
        frames = GuardedFrames(_check(safe_dataset(ds), where), where)  # no filter that can crash reads it
        if (problem := unstored_problem(ds, where, frames.shape[0])) is not None:  # 10^8 unwritten frames
            raise StackError(problem)
        return FrameStack(frames, where, lambda: _close(linked, f), _sampling(f, name, path))
    except UnsafeChunks as e:  # a refused filter: one line naming the dataset and the filter
        _close(linked, f)
        raise StackError(f"{path}{':' + name if name else ''}: {e}") from None
    except BaseException:  # StackError, or h5py's on a damaged file (turned into one by the caller)
        _close(linked, f)
        raise


def _close(*files: h5py.File | None) -> None:
    for f in files:
        if f is not None:
            f.close()


def _open_mrc(path: Path, opener: Any = open_mrc) -> FrameStack:
    """An MRC image or image stack (``stack_mrc.open_mrc``: modes, pixel size, explicit reads), or a DM3 /
    DM4 file's (``stack_dm.open_dm``: the same explicit reads)."""
    frames, sampling = opener(path)
    try:
        return FrameStack(_check(frames, str(path)), str(path), frames.close, sampling)
    except StackError:
        frames.close()
        raise


def _npy_layout(path: Path) -> tuple[int, bool]:
    """Where an NPY file's array starts, and whether it is in Fortran order (its header, read again:
    ``npy_declared`` has checked it)."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        _shape, fortran, _dt = read(fh, max_header_size=NPY_MAX_HEADER)
        return fh.tell(), bool(fortran)


def _sampling(f: h5py.File, name: str, path: Path) -> dict[str, float]:
    """Detector sampling stated by the dataset's attributes, else the file's (dataset wins).

    A stated value that is no finite number > 0 is refused, naming the file and the attribute
    (``counts_per_px = inf`` was a four-line pydantic dump naming neither; a string was skipped)."""
    out: dict[str, float] = {}
    for where, attrs in ((str(path), f.attrs), (f"{path}:{name}", f[name].attrs)):
        try:
            out.update(sampling_attrs({k: attrs[k] for k in SAMPLING_ATTRS if k in attrs}, where))
        except ValueError as e:
            raise StackError(str(e)) from None
    if "dose_e_per_A2" in out:  # one dose form only: per area wins
        out.pop("counts_per_px", None)
    return out


@contextmanager
def atomic_h5(path: Path, remove_stale: bool = True, overwrite: bool = True) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name (``.<name>.partial``), renamed to ``path`` only once
    complete; on any failure discarded (``discard_h5``), so nothing is left behind.

    Call it holding the output's lock (``formats/output_lock.py``): a temporary file already there is
    then a killed job's, removed when ``remove_stale``. It is created exclusively: h5py's ``"w"``
    truncated a file another job was writing before HDF5's own lock refused, and that job then finished
    with half its frames unreadable. Without the lock (a file system that refuses it) a temporary file
    found is left alone and refused, naming it. ``overwrite=False``: a ``path`` that appeared while the
    file was written is not replaced (``FileExistsError``, the file discarded).
    """
    tmp = path.with_name(f".{path.name}.partial")
    if remove_stale:
        tmp.unlink(missing_ok=True)
    try:
        f = h5py.File(tmp, "x")
    except FileExistsError:
        raise StackError(
            f"{path}: {tmp} exists: another job may be writing it; if none is, remove it and run again"
        ) from None
    try:
        yield f
        f.flush()  # a full disk surfaces here, while the file can still be discarded safely
        f.close()
    except BaseException:
        discard_h5(f, tmp)
        raise
    try:
        if not overwrite and path.exists():
            raise FileExistsError(
                f"{path} appeared while this job ran, and is kept; nothing was written: run again with "
                "--overwrite to replace it, or move it away"
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def discard_h5(f: h5py.File, path: Path) -> None:
    """Close ``f`` without writing another byte to it, and remove its file at ``path``.

    Why: after HDF5 failed to write (a full disk, a file size limit), closing the file flushes its
    caches again, fails half-way, and libhdf5 then crashed the process when the objects were freed
    (SIGSEGV / SIGBUS at exit, after the error line), the temporary file left behind. The file is not
    wanted any more, so its descriptor is pointed at the null device first: the close's writes all
    succeed, going nowhere. Where that cannot be done (another HDF5 driver, or the close fails even
    so), ``f`` is abandoned as ``AcqFile.abandon`` does: one reference never released, never freed.
    """
    try:
        let_go_h5(f)
    finally:
        Path(path).unlink(missing_ok=True)


def let_go_h5(f: h5py.File) -> None:
    """Close ``f`` after HDF5 failed to write it, without writing another byte (``discard_h5``; the
    Dask path's partial, which stays for a resume)."""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        f.close()
    except Exception:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(f))


def create_output(
    f: h5py.File,
    shape: tuple[int, int, int],
    attrs: dict[str, Any],
    dataset: str = "denoised",
    compression: str = "bitshuffle-lz4",
) -> h5py.Dataset:
    """The output's ``dataset`` (float32, one chunk per frame) and ``replaced_pixels``; ``attrs`` and
    the ``compression`` (``formats/compression.py``: gzip or none for readers without hdf5plugin) as
    the file's attributes."""
    _, h, w = shape
    ds = f.create_dataset(dataset, shape=shape, dtype="float32", chunks=(1, h, w), **filter_args(compression))
    ds.attrs["units"] = "counts per pixel per frame (expected, denoised)"
    bad = f.create_dataset("replaced_pixels", shape=(shape[0],), dtype="int64", fillvalue=0)
    bad.attrs["description"] = (
        "pixels per input frame replaced by the frame's mean before denoising: NaN / Inf in float "
        "frames, the dtype's maximum (defective, gap or saturated) in unsigned ones, and hot pixels "
        "(a count impossible under Poisson statistics at the stated dose); the denoised values there "
        "are invented"
    )
    for k, v in attrs.items():
        f.attrs[k] = h5_text(v) if isinstance(v, str) else v if isinstance(v, int | float) else json.dumps(v)
    f.attrs["compression"] = compression
    return ds


def h5_text(text: str) -> str:
    """``text`` as an HDF5 string attribute takes it (valid UTF-8), whatever file name it holds.

    Why: a path is a ``str`` with surrogate escapes where its bytes are not UTF-8 (``caf\\xe9.h5``
    copied from an old share), or not the locale's (a UTF-8 name under an ASCII locale), and h5py
    encodes strictly: denoising such a file failed with "surrogates not allowed". The escapes go
    back to the bytes on disk, which are read as UTF-8: a UTF-8 name is itself again whatever the
    locale, and a byte that is not UTF-8 is written as the four characters ``\\xe9``.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
