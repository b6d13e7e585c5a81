"""Reading stacks of counted frames from files and writing denoised stacks, for offline ``denoise``.

Inputs are read lazily (h5py slices, memory-mapped NPY/MRC/TIFF, compressed TIFFs page by page:
``stack_tiff.py``) so a recording larger than memory streams through; which HDF5 dataset holds the
frames, links followed, is ``stack_hdf5.py``'s. Output goes to a temporary name and is renamed only
when complete, so an interrupted run never leaves a file that looks finished.

What a file declares is checked before anything is mapped or read (``stack_headers.py``,
``formats/limits.py``): frame sides 1 to 16384, a frame within the wire encoder's payload, at most
10^9 frames, and, for an uncompressed layout, no more bytes than the file holds. A crafted header is
one ``StackError`` line, never an allocation of what it claims.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # registers bitshuffle-LZ4 for reading (recordings are a valid input) and writing
import numpy as np

from sbd_stream.formats.limits import count_problem, frame_problem, sampling_attrs
from sbd_stream.formats.recording import SAMPLING_ATTRS
from sbd_stream.sources.stack_hdf5 import DEFAULT_H5_DATASETS, GuardedFrames, dataset_names, guess_dataset
from sbd_stream.sources.stack_headers import (
    StackError,
    check_dtype,
    imod_unsigned,
    mrc_declared,
    npy_declared,
)
from sbd_stream.sources.stack_tiff import LENGTH_UNITS_A, open_tiff

__all__ = [
    "DEFAULT_H5_DATASETS", "HDF5_SUFFIXES", "LENGTH_UNITS_A", "SUPPORTED_SUFFIXES", "FrameStack",
    "StackError", "atomic_h5", "create_output", "open_stack",
]  # fmt: skip

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".nxs", ".hspy"}
"""HDF5 files by their name (``.hspy``: HyperSpy's, frames at ``/Experiments/<title>/data``)."""
SUPPORTED_SUFFIXES = HDF5_SUFFIXES | {".npy", ".tif", ".tiff", ".mrc", ".mrcs"}


@dataclass
class FrameStack:
    """A lazily indexable (N, H, W) stack; ``frames[i:j]`` returns a NumPy array."""

    frames: Any
    source: str
    closer: Any = None
    sampling: dict[str, float] = field(default_factory=dict)  # pixel_size_A, dose_e_per_A2 | counts_per_px

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.frames.dtype)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, self.shape[0], size):
            yield np.array(self.frames[i : i + size])  # a writable copy: torch refuses read-only memory

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
        return np.asarray(self.ds)[None][s]


def open_stack(path: Path, dataset: str | None = None) -> FrameStack:
    """Open an HDF5, NPY, TIFF or MRC stack; ``dataset`` names the HDF5 dataset when it isn't obvious.

    The pixel size a TIFF (ImageJ ``unit`` + resolution tags, as ``sbd-stream export`` writes them) or
    an MRC header (``voxel_size``) states is read into ``sampling`` like HDF5 attributes, so a file
    exported and denoised again keeps its sampling instead of silently taking the paper's. A
    ``dataset`` for a file that has none (TIFF, NPY, MRC) is refused: ``-d no/such/dataset`` on an NPY
    was ignored without a word.
    """
    if not path.exists():
        raise StackError(f"{path}: no such file")
    if path.is_dir():
        raise StackError(f"{path}: is a folder; name a file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise StackError(
            f"{path}: unsupported file type '{suffix}' (use .h5/.hdf5/.nxs/.hspy, .npy, .tif/.tiff or .mrc)"
        )
    if dataset is not None and suffix not in HDF5_SUFFIXES:
        raise StackError(
            f"{path}: --dataset {dataset!r} names an HDF5 dataset, and a {suffix} file has none: leave "
            "--dataset out"
        )
    try:
        return _open(path, suffix, dataset)
    except (OverflowError, MemoryError) as e:  # a size no check above foresaw: still one line
        raise StackError(
            f"{path}: declares sizes this machine cannot map or hold ({type(e).__name__})"
        ) from None


def _open(path: Path, suffix: str, dataset: str | None) -> FrameStack:
    if suffix in {".mrc", ".mrcs"}:
        return _open_mrc(path)
    if suffix == ".npy":
        try:
            npy_declared(path)  # the header's shape against the limits and the file's size, first
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise StackError(f"{path}: {e}") from None
        return FrameStack(_check(arr, str(path)), str(path))
    if suffix in {".tif", ".tiff"}:
        frames, sampling, closer = open_tiff(path)
        try:
            return FrameStack(_check(frames, str(path)), str(path), closer, sampling)
        except StackError:
            if closer is not None:
                closer()
            raise
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StackError(f"{path}: not a readable HDF5 file ({e})") from e
    linked: h5py.File | None = None
    try:
        name = dataset or guess_dataset(f, path)
        if not isinstance(f.get(name), h5py.Dataset):
            known = ", ".join(dataset_names(f)) or "none"
            raise StackError(f"{path}: no dataset '{name}' (datasets: {known})")
        where, ds = f"{path}:{name}", f[name]
        linked = ds.file if ds.file.id != f.id else None  # behind an external link: its own file
        frames = GuardedFrames(_check(ds, where), where)
        return FrameStack(frames, where, lambda: _close(linked, f), _sampling(f, name, path))
    except StackError:
        _close(linked, f)
        raise


def _close(*files: h5py.File | None) -> None:
    for f in files:
        if f is not None:
            f.close()


def _open_mrc(path: Path) -> FrameStack:
    """An MRC image or image stack, memory-mapped; ``voxel_size`` (A) as the pixel size when set.

    Mode 0 is signed bytes (MRC2014) unless IMOD's stamp and flags say unsigned (``imod_unsigned``)."""
    import mrcfile

    try:
        mrc_declared(path)  # the header's sizes against the limits and the file's size, first
        mrc = mrcfile.mmap(path, mode="r", permissive=False)
    except ValueError as e:
        raise StackError(f"{path}: {e}") from None
    except OSError as e:
        raise StackError(f"{path}: not a readable MRC file ({e})") from e
    try:
        px = float(mrc.voxel_size.x)
        sampling = {"pixel_size_A": px} if np.isfinite(px) and px > 0 else {}
        data = mrc.data.view(np.uint8) if imod_unsigned(mrc.header) else mrc.data
        return FrameStack(_check(data, str(path)), str(path), mrc.close, sampling)
    except StackError:
        mrc.close()
        raise


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
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name and renamed into place only on success."""
    tmp = path.with_name(f".{path.name}.partial")
    f = h5py.File(tmp, "w")
    try:
        yield f
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def create_output(
    f: h5py.File, shape: tuple[int, int, int], attrs: dict[str, Any], dataset: str = "denoised"
) -> h5py.Dataset:
    _, h, w = shape
    ds = f.create_dataset(
        dataset, shape=shape, dtype="float32", chunks=(1, h, w), **hdf5plugin.Bitshuffle(cname="lz4")
    )
    ds.attrs["units"] = "counts per pixel per frame (expected, denoised)"
    bad = f.create_dataset("replaced_pixels", shape=(shape[0],), dtype="int64", fillvalue=0)
    bad.attrs["description"] = (
        "pixels per input frame replaced by the frame's mean before denoising: NaN / Inf in float "
        "frames, the dtype's maximum (defective, gap or saturated) in unsigned ones; the denoised "
        "values there are invented"
    )
    for k, v in attrs.items():
        f.attrs[k] = v if isinstance(v, str | int | float) else json.dumps(v)
    return ds
