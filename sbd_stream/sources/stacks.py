"""Reading stacks of counted frames from files and writing denoised stacks, for offline ``denoise``.

Inputs are read lazily (h5py slices, memory-mapped NPY/TIFF) so a recording larger than memory streams
through. Output goes to a temporary name and is renamed only when complete, so an interrupted run never
leaves a file that looks finished.

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
from sbd_stream.sources.stack_headers import (
    check_dtype,
    imread_cap,
    mrc_declared,
    npy_declared,
    tiff_declared,
)

SUPPORTED_SUFFIXES = {".h5", ".hdf5", ".hdf", ".nxs", ".npy", ".tif", ".tiff", ".mrc", ".mrcs"}
LENGTH_UNITS_A = {
    "angstrom": 1.0, "a": 1.0, "\u00c5": 1.0, "\u00e5": 1.0, "\\u00c5": 1.0, "nm": 10.0, "nanometer": 10.0,
    "pm": 0.01, "um": 1e4, "\u00b5m": 1e4, "micron": 1e4, "microns": 1e4,
}  # fmt: skip
"""A pixel size's unit in a TIFF's ImageJ metadata or JSON description -> angstrom per unit."""
DEFAULT_H5_DATASETS = ("raw", "frames", "data", "entry/data/data", "images/noisy", "noisy")


class StackError(ValueError):
    """The input is not a usable stack of frames; the message says what is wrong and how to fix it."""


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
    exported and denoised again keeps its sampling instead of silently taking the paper's.
    """
    if not path.exists():
        raise StackError(f"{path}: no such file")
    if path.is_dir():
        raise StackError(f"{path}: is a folder; name a file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise StackError(
            f"{path}: unsupported file type '{suffix}' (use .h5/.hdf5/.nxs, .npy, .tif/.tiff or .mrc)"
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
        return _open_tiff(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StackError(f"{path}: not a readable HDF5 file ({e})") from e
    name = dataset or _guess_dataset(f, path)
    if name not in f or not isinstance(f[name], h5py.Dataset):
        known = ", ".join(_datasets(f)) or "none"
        f.close()
        raise StackError(f"{path}: no dataset '{name}' (datasets: {known})")
    try:
        return FrameStack(
            _check(f[name], f"{path}:{name}"), f"{path}:{name}", f.close, _sampling(f, name, path)
        )
    except StackError:
        f.close()
        raise


def _open_tiff(path: Path) -> FrameStack:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            sampling = _tiff_sampling(tif)
            # interleaved samples (axes ...YXS): a colour picture, which a stack read would turn into
            # frames of width 3. Planar samples (SYX) are kept as frames: tifffile writes a (3, H, W)
            # array that way (abTEM's to_tiff of a 3-image defocus series), each plane a whole image.
            if axes.endswith("S"):
                raise StackError(
                    f"{path}: a colour TIFF (shape {shape}, axes {axes}); a counted frame has one value "
                    "per pixel: save the frames as a greyscale stack"
                )
            try:
                _, dt, compressed = tiff_declared(path, tif)
            except ValueError as e:
                raise StackError(f"{path}: {e}") from None
        try:
            arr = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed (or scattered) pages can't be memory-mapped: decoded whole
            declared = int(np.prod(shape, dtype=object)) * dt.itemsize
            if compressed and declared > imread_cap():
                raise StackError(
                    f"{path}: a compressed TIFF of {declared} bytes decoded, more than half this machine's "
                    "memory; save it uncompressed (memory-mapped) or as HDF5"
                ) from None
            arr = tifffile.imread(path)
    except StackError:
        raise
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as e:
        raise StackError(f"{path}: not a readable TIFF ({' '.join(str(e).split())})") from e
    return FrameStack(_check(arr, str(path)), str(path), sampling=sampling)


def _tiff_sampling(tif: Any) -> dict[str, float]:
    """``pixel_size_A`` from an ImageJ TIFF (``unit`` + XResolution, pixels per unit) or from the JSON
    description of a plain TIFF (``pixel_size`` + ``unit``), when the unit is a length; else nothing.

    A TIFF's bare resolution tags (inch, centimetre: dots per inch of a print) say nothing about the
    specimen, so only a stated length unit counts.
    """
    meta = dict(tif.imagej_metadata or {})
    if not meta and tif.shaped_metadata:
        meta = dict(tif.shaped_metadata[0] or {})
    scale = LENGTH_UNITS_A.get(str(meta.get("unit", "")).strip().lower())
    if scale is None:
        return _abtem_sampling(tif.pages[0].description)
    size = meta.get("pixel_size")
    if size is None:
        tag = tif.pages[0].tags.get("XResolution")
        if tag is None:
            return {}
        num, den = tag.value
        size = den / num if num else None
    try:
        px = float(size) * scale if size is not None else 0.0
    except (TypeError, ValueError):
        return {}
    return {"pixel_size_A": px} if np.isfinite(px) and px > 0 else {}


def _abtem_sampling(description: str) -> dict[str, float]:
    """``pixel_size_A`` from abTEM's ``Images.to_tiff`` description: JSON whose ``axes`` hold two
    ``RealSpaceAxis`` entries with ``sampling`` and ``units``; equal samplings only (a square pixel).

    An abTEM user's TIFF at 0.05 A was denoised at the paper's 0.060 A because this went unread.
    """
    try:
        axes = json.loads(description).get("axes", {}) if description.lstrip().startswith("{") else {}
    except (ValueError, AttributeError):
        return {}
    sizes = []
    for ax in axes.values() if isinstance(axes, dict) else ():
        if isinstance(ax, dict) and ax.get("type") == "RealSpaceAxis" and "sampling" in ax:
            scale = LENGTH_UNITS_A.get(str(ax.get("units", "")).strip().lower())
            try:
                sizes.append(float(ax["sampling"]) * scale if scale else float("nan"))
            except (TypeError, ValueError):
                return {}
    if len(sizes) != 2 or not all(np.isfinite(sizes)) or min(sizes) <= 0:
        return {}
    if abs(sizes[0] - sizes[1]) > 1e-3 * sizes[0]:
        return {}
    return {"pixel_size_A": sizes[0]}


def _open_mrc(path: Path) -> FrameStack:
    """An MRC image or image stack, memory-mapped; ``voxel_size`` (A) as the pixel size when set."""
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
        return FrameStack(_check(mrc.data, str(path)), str(path), mrc.close, sampling)
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


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _guess_dataset(f: h5py.File, path: Path) -> str:
    for name in DEFAULT_H5_DATASETS:
        if name in f and isinstance(f[name], h5py.Dataset):
            return name
    stacks = [n for n in _datasets(f) if f[n].ndim in (2, 3)]
    if len(stacks) == 1:
        return stacks[0]
    raise StackError(
        f"{path}: cannot tell which dataset holds the frames ({', '.join(stacks) or 'none found'}); "
        "pass --dataset NAME"
    )


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
