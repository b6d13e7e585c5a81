"""Zarr stores (a folder, v2 or v3) as a stack of frames: abTEM's own save format and any plain array.

abTEM's ``measurement.to_zarr("x.zarr")`` writes a group holding ``array0`` and, in the group's
attributes, ``metadata0``: the measurement's ``axes`` (``axis_0`` ... ``axis_k``), the image axes of type
``RealSpaceAxis`` with ``sampling`` and ``units`` (angstrom). That sampling is the pixel size, read as a
TIFF's or an MRC's is; a diffraction pattern's reciprocal axes or a unit that is no length state none (the
documented default applies). A plain zarr array of (n, H, W) or (H, W) is read as is, its sampling from
``pixel_size_A`` / ``dose_e_per_A2`` / ``counts_per_px`` attributes, as an HDF5 dataset's.

Bounded: the shape is checked by ``stacks._check`` before any read, and a chunk may not decode to more
than half the machine's memory (``imread_cap``): a batch decodes every chunk it touches, whole.
Every file of the store is read through ``stack_zarr_guard.GuardedStore`` (a regular file of a bounded
size, each chunk's codec header checked against the chunk before numcodecs allocates what it declares;
gzip / zlib / bz2 / lzma chunks decoded once, stopped past the chunk's size: ``stack_zarr_bounded``),
and a store declaring far more frames than it holds chunk files for is refused (``_stored_problem``).
A chunk that cannot be read or decoded is one ``StackError`` naming the store and the frames.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.limits import sampling_attrs
from sbd_stream.formats.recording import SAMPLING_ATTRS
from sbd_stream.sources.stack_headers import StackError, imread_cap
from sbd_stream.sources.stack_units import LENGTH_UNITS_A, not_bool, square_pixel
from sbd_stream.sources.stack_zarr_bounded import bounded_array
from sbd_stream.sources.stack_zarr_guard import GuardedStore, chunk_check

__all__ = ["ZARR_MARKERS", "ZarrFrames", "is_zarr_store", "open_zarr"]

ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
"""A folder holding one of these is a zarr store (v3; v2 array; v2 group)."""
ZARR_METADATA = {*ZARR_MARKERS, ".zattrs", ".zmetadata"}
FILL_FRAMES = 1024
"""Frames a store may declare beyond twice those its chunk files can hold (fill value, never written)."""


def is_zarr_store(path: Path) -> bool:
    """Whether the folder ``path`` is a zarr store (by its metadata file, whatever its name)."""
    return path.is_dir() and any((path / m).is_file() for m in ZARR_MARKERS)


class ZarrFrames:
    """A zarr array's frames: ``[i:j]`` decodes the chunks those frames touch; a failure is one line."""

    def __init__(self, arr: Any, where: str) -> None:
        self.arr, self.where = arr, where
        self.shape, self.dtype = tuple(arr.shape), np.dtype(arr.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        try:
            return np.asarray(self.arr[index])
        except Exception as e:  # numcodecs / zarr / OS errors of a damaged or missing chunk, many types
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise StackError(f"{self.where}: frames {index}: cannot read ({why}); damaged?") from None


def open_zarr(path: Path, dataset: str | None) -> tuple[ZarrFrames, str, dict[str, float]]:
    """(frames, where, sampling) of the zarr store at ``path``; ``dataset`` names an array of a group
    that holds several. Raises ``StackError`` (one line) for anything that is no usable array."""
    import zarr

    try:
        store = GuardedStore(path)  # no FIFO, device or oversized file read; chunk headers checked
        node = zarr.open(store=store, mode="r")
        name, arr, group = _array(node, dataset, path)
        store.check = chunk_check(arr)  # before any chunk is read: its codec's decoded size can be bounded
        arr = bounded_array(arr, store.check)  # gzip / zlib / bz2 / lzma: decoded once, bounded
        chunk_bytes = math.prod(int(c) for c in arr.chunks) * np.dtype(arr.dtype).itemsize
    except StackError:
        raise
    except Exception as e:  # zarr's metadata errors: JSON, validation, node not found (many types)
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise StackError(f"{path}: not a readable zarr store ({type(e).__name__}: {why})") from None
    if chunk_bytes > imread_cap():
        raise StackError(
            f"{path}: a chunk of {tuple(arr.chunks)} {arr.dtype} decodes to {chunk_bytes} bytes, over half "
            "this machine's memory; rechunk it (e.g. one frame a chunk)"
        )
    if (stored := _stored_problem(arr, path / name if name else path)) is not None:
        raise StackError(f"{path}: {stored}")
    where = f"{path}:{name}" if name else str(path)
    meta_name = name
    if group is None and (parent := _parent_group(path)) is not None:  # abTEM's x.zarr/array0 itself
        meta_name, group = path.name, parent
    return ZarrFrames(arr, where), where, _sampling(arr, group, meta_name, where)


def _stored_problem(arr: Any, folder: Path) -> str | None:
    """Why ``arr`` (kept in ``folder``) declares far more frames than it holds chunk files for, or None.

    Why: a chunk never written reads as the fill value, so a 2 kB ``.zarray`` declaring 10^8 frames
    (10^12 pixels) with three chunk files made ``denoise`` denoise 10^8 blank frames, days of work, and
    write them. zarr writes no chunk that holds only its fill value, so a real store may lack some; one
    whose chunk files cannot cover half its frames, and more than ``FILL_FRAMES`` of them, is refused
    (each file counted as a frame slab of its own, the most frames it can stand for). The files are
    counted here, no more than that takes: zarr's ``nchunks_initialized`` made a key for each of the
    10^8 chunks declared."""
    if len(arr.shape) != 3:
        return None
    slab = int((arr.shards or arr.chunks)[0])  # a sharded array's files are its shards
    n = int(arr.shape[0])
    if n <= FILL_FRAMES:
        return None
    enough = (n - FILL_FRAMES) // (2 * slab) + 1  # files for over (n - FILL_FRAMES) / 2
    held = 0
    for _root, _dirs, files in os.walk(folder):
        held += sum(1 for f in files if f not in ZARR_METADATA)
        if held >= enough:
            return None
    return (
        f"declares {n} frames but holds chunk files for at most {held * slab} (the rest would read as its "
        "fill value); cut short or crafted?"
    )


def _parent_group(path: Path) -> Any:
    """The zarr group around the array folder ``path`` when it is one of abTEM's (``x.zarr/array0``),
    else None. Why: abTEM keeps the pixel size in the group's ``metadata0``, so the array folder given
    alone was denoised at the 0.060 A default."""
    import zarr

    if not path.name.startswith("array") or not is_zarr_store(path.resolve().parent):
        return None
    try:
        node = zarr.open(store=GuardedStore(path.resolve().parent), mode="r")
    except Exception:  # zarr's metadata errors (many types): the array alone, as before
        return None
    return node if isinstance(node, zarr.Group) else None


def _array(node: Any, dataset: str | None, path: Path) -> tuple[str, Any, Any]:
    import zarr

    if isinstance(node, zarr.Array):
        if dataset is not None:
            raise StackError(f"{path}: a single zarr array; --dataset {dataset!r} names nothing in it")
        return "", node, None
    names = sorted(k for k, _ in node.arrays())
    if dataset is not None:
        if dataset.strip("/") not in names:
            raise StackError(f"{path}: no array '{dataset}' (arrays: {', '.join(names) or 'none'})")
        names = [dataset.strip("/")]
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise StackError(
            f"{path}: {len(names)} arrays at the top of the store ({found}); name one with --dataset"
        )
    return names[0], node[names[0]], node


def _sampling(arr: Any, group: Any, name: str, where: str) -> dict[str, float]:
    """abTEM's ``metadata<k>`` for ``array<k>``, else the array's own sampling attributes."""
    meta = dict(group.attrs).get(f"metadata{name.removeprefix('array')}") if group is not None else None
    if isinstance(meta, dict) and isinstance(meta.get("axes"), dict):
        return abtem_axes_sampling(meta["axes"], len(arr.shape), where)
    attrs = dict(arr.attrs)
    try:
        return sampling_attrs({k: attrs[k] for k in SAMPLING_ATTRS if k in attrs}, where)
    except ValueError as e:
        raise StackError(str(e)) from None


def abtem_axes_sampling(axes: dict[str, Any], ndim: int, where: str) -> dict[str, float]:
    """``pixel_size_A`` from abTEM's axes metadata: the last two axes, when both are ``RealSpaceAxis``
    in a length unit; none otherwise (reciprocal space, no unit). Non-square pixels are refused."""
    last = [axes.get(f"axis_{k}") for k in (ndim - 2, ndim - 1)]
    sizes = []
    for ax in last:
        if not isinstance(ax, dict) or ax.get("type") != "RealSpaceAxis":
            return {}
        scale = LENGTH_UNITS_A.get(str(ax.get("units", "")).strip().lower())
        not_bool(ax.get("sampling"), "abTEM's axes: sampling", where)
        try:
            sizes.append(float(ax["sampling"]) * scale if scale is not None else math.nan)
        except (KeyError, TypeError, ValueError):
            return {}
    return square_pixel(sizes, "abTEM's axes", where)
