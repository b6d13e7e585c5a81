"""How large a frame, a stack and a recording may declare itself before anything is read or allocated.

Why: a file's header is a claim, and the readers used to believe it. A 200-byte TIFF declaring
65000 x 65000 pixels made ``denoise`` allocate 7.9 GiB; an MRC or NPY header with sizes of 2^31 or a
negative one raised OverflowError; a recording whose per-row datasets were resized to 10^12 rows
made ``export`` and ``replay`` allocate 7 TiB for the time column. Every reader now checks what it
was told against these limits (and against the file's size, where the layout is uncompressed) and
refuses in one line.

The limits are the wire format's: a side of 1 to ``protocol.MAX_SIDE`` pixels and a frame of at most
the encoder's payload bound, so whatever a file reader accepts, the live service could carry.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD, MAX_SIDE

__all__ = [
    "BLOCK_ROWS",
    "FILL_FRAMES",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "PIXEL_SIZE_A_RANGE",
    "RecordingError",
    "bool_text",
    "check_dtype",
    "count_problem",
    "external_problem",
    "frame_problem",
    "is_bool",
    "sampling_attrs",
    "sampling_value",
    "trusted_rows",
    "unstored_problem",
]

MAX_FRAMES = 10**9
"""Most frames one stack or one recording part may declare: a billion K2 frames are 8 PB."""
MAX_FRAME_BYTES = 2 * DEFAULT_MAX_PAYLOAD
"""Largest frame a file reader takes: what the wire encoder accepts (``protocol.encode``), twice the
ingest's default ``max_payload_bytes``, so a 3838 x 3710 float64 frame (or a 4096 x 4096 float32 one)
still reads."""
FILL_FRAMES = 1024
"""Frames a stack may declare beyond twice those its file stores (never written: the fill value)."""
BLOCK_ROWS = 1 << 20
"""Rows of a per-row dataset read at once (a MiB of ``complete``, 8 MiB of ``seq``)."""


PIXEL_SIZE_A_RANGE = (1e-3, 1e3)
"""Detector pixel sizes at the specimen (A) a file may state: 0.1 pm to 100 nm. Beyond them a stated
``pixel_size_A`` is damage, not a microscope: 1e-300 made ``denoise`` plan a binning factor of 10^299
(a TypeError writing the output's attributes), 1e-6 an upsampling that asked for 460 GB."""


class RecordingError(ValueError):
    """A recording whose datasets declare sizes it cannot hold (crafted or damaged); one line."""


def check_dtype(dt: np.dtype) -> None:
    """ValueError unless ``dt`` holds counts or intensities: unsigned / signed integers or floats of at
    most 8 bytes. Bool, complex, strings, structured and object arrays are refused (a complex stack
    lost its imaginary part unnoticed; an object array would need a pickle). One rule for every file
    reader (stacks, recordings, export), as the live edge refuses other pixel types (``bad_dtype``)."""
    if dt.hasobject:
        raise ValueError(f"dtype {dt} holds Python objects (a pickle), which are never loaded")
    if dt.kind not in "uif" or dt.itemsize > 8:
        raise ValueError(f"dtype {dt} is not a count or intensity type (need uint/int/float)")


def frame_problem(
    shape: tuple[int, ...], itemsize: int, max_bytes: int = MAX_FRAME_BYTES, limit: str = "the reader's limit"
) -> str | None:
    """Why frames of ``shape`` (H, W) and ``itemsize`` bytes per pixel cannot be read, or None."""
    if len(shape) != 2:
        return f"frames of shape {tuple(shape)} are not 2-D images"
    h, w = (int(x) for x in shape)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        return f"frames of {h}x{w} pixels: each side must be 1 to {MAX_SIDE} (the product's frame limit)"
    nbytes = h * w * int(itemsize)
    if nbytes > max_bytes:
        return f"frames of {h}x{w} x {itemsize} bytes ({nbytes} bytes) exceed {limit} ({max_bytes} bytes)"
    return None


def count_problem(n: int) -> str | None:
    """Why a stack of ``n`` frames cannot be planned, or None."""
    if n > MAX_FRAMES:
        return f"{n} frames declared, more than {MAX_FRAMES:.0e} (a damaged or crafted header?)"
    return None


def external_problem(ds: Any, where: str) -> str | None:
    """Why the HDF5 dataset ``ds`` is refused because its bytes live in other files, or None.

    Why: HDF5's external raw storage (``H5Pset_external``) names plain files by any path, and reading
    the dataset reads their bytes: a 1 kB file from elsewhere made ``denoise`` / ``replay`` read
    ``/etc/passwd`` (or the user's CURVE secret key) as frames and copy it into their outputs (audit
    h30). No detector or ``serve`` writes such datasets. External links and virtual datasets are
    followed (a DECTRIS master file keeps its frames behind them): they reach HDF5 datasets only."""
    external = getattr(ds, "external", None)
    if not external:
        return None
    first = str(external[0][0])[:80]
    return (
        f"{where}: its data is kept outside the file (HDF5 external storage, {first!r}); "
        "such datasets are never read"
    )


def unstored_problem(ds: Any, where: str, frames: int, strict: bool = False) -> str | None:
    """Why the HDF5 dataset ``ds`` (``frames`` frames) is refused because its file stores far fewer
    pixels than it declares, or None. Stored: its chunks (each counted whole), or a contiguous
    dataset's allocated bytes (0 when never written); a compact or virtual dataset holds or names its
    data, external storage is ``external_problem``'s.

    Why (session 33): a chunk never written reads as the fill value, so a 10 kB file declaring
    (10^8, 64, 64) with no chunk written made ``denoise`` denoise 10^8 blank frames (days). A real file
    may lack a few chunks (fill value), so, as for a zarr store (``stack_zarr._stored_problem``), one is
    refused only when what it stores cannot cover half its frames and more than ``FILL_FRAMES`` frames
    would be blank; ``strict`` (EMD: Velox, ncempy and HyperSpy write every frame): any pixel missing."""
    from h5py import h5d  # here: this module is imported where no HDF5 file is read

    if ds.is_virtual or ds.external or ds.id.get_create_plist().get_layout() == h5d.COMPACT:
        return None
    declared = math.prod(int(n) for n in ds.shape)
    if ds.chunks is not None:  # get_num_chunks walks the chunk index: the chunks written, not declared
        stored = int(ds.id.get_num_chunks()) * math.prod(int(c) for c in ds.chunks)
    else:
        stored = int(ds.id.get_storage_size()) // max(1, ds.dtype.itemsize)
    if stored >= declared:
        return None
    frame = max(1, declared // max(1, frames))
    blank = (declared - stored) // frame
    if not strict and (2 * stored >= declared or blank <= FILL_FRAMES):
        return None
    blanks = "the rest" if strict else f"{blank} or more of its {frames} frames"
    return (
        f"{where}: declares {declared} pixels but the file stores {stored}; {blanks} would read as the "
        "fill value (cut short or crafted?)"
    )


def _row_datasets(g: Any) -> list[Any]:
    return [g[name] for name in ("complete", "seq", "ts", "time", "frame") if name in g]


def trusted_rows(g: Any, where: str, max_rows: int = MAX_FRAMES) -> int:
    """The rows of a recording group (``frames`` and its per-row columns) that were written whole.

    A row counts when every per-row dataset and ``frames`` reach it, when ``complete`` and ``frames``
    have storage for it (HDF5 allocates a chunk only when it is written: extents cost nothing to
    declare, so the rows to read are bounded by the file's size) and when it is not past the last row
    marked complete (rows after it were never written, or cut short).
    Reads at most one block of ``complete`` at a time; raises ``RecordingError`` beyond ``max_rows``.
    """
    cols = _row_datasets(g)
    if "complete" not in g:
        raise RecordingError(f"{where}: no 'complete' column (is this a recording made by `serve`?)")
    for d in [g["frames"], *cols]:
        if (problem := external_problem(d, f"{where}/{d.name.rsplit('/', 1)[-1]}")) is not None:
            raise RecordingError(problem)
    n = min([int(g["frames"].shape[0])] + [int(d.shape[0]) for d in cols])
    complete, frames = g["complete"], g["frames"]
    if complete.chunks is not None and complete.id.get_create_plist().get_nfilters() == 0:
        n = min(n, int(complete.id.get_storage_size()) // complete.dtype.itemsize)
    if frames.chunks is not None:  # a frame never written has no chunk (10^12 declared rows: a few stored)
        n = min(n, int(frames.id.get_num_chunks()) * int(frames.chunks[0]))
    if n > max_rows:
        raise RecordingError(f"{where}: {n} rows declared, more than {max_rows:.0e} (damaged or crafted?)")
    while n > 0:  # back to the last row marked complete, one block at a time
        a = max(0, n - BLOCK_ROWS)
        marked = np.flatnonzero(np.asarray(complete[a:n]) == 1)
        if marked.size:
            return a + int(marked[-1]) + 1
        n = a
    return 0


def is_bool(value: Any) -> bool:
    """Whether ``value`` is true / false (Python's, NumPy's, or a NumPy array of them) where a number is
    asked. Why (session 35): ``float(True)`` is 1.0, so an HDF5 attribute ``pixel_size_A = True`` (h5py:
    ``numpy.bool_``), a zarr or JSON ``true`` read as a 1 A pixel, exit 0; ints stay numbers."""
    return isinstance(value, bool | np.bool_) or (isinstance(value, np.ndarray) and value.dtype == np.bool_)


def bool_text(value: Any) -> str:
    """A boolean as the file or settings wrote it (``true`` / ``false``): NumPy 2 shows ``np.True_``."""
    flat = np.asarray(value).reshape(-1)
    return str(bool(flat[0])).lower() if flat.size == 1 else f"{flat.size} booleans"


def sampling_value(value: Any) -> float:
    """An attribute stating a sampling (``pixel_size_A``, ``dose_e_per_A2``, ``counts_per_px``) as a
    finite number > 0; else ValueError saying so in one line (the caller names the file and attribute:
    pydantic's four-line dump of ``counts_per_px = inf`` named neither)."""
    if is_bool(value):
        raise ValueError(f"{bool_text(value)} is a boolean, not a number: state the number")
    try:
        v = float(value.item() if isinstance(value, np.ndarray) and value.size == 1 else value)
    except (TypeError, ValueError, OverflowError):
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        shown = " ".join(repr(value[:61] if isinstance(value, str | bytes) else value).split())  # numpy wraps
        raise ValueError(f"must be a finite number > 0 (got {shown[:60]}{'...' if len(shown) > 60 else ''})")
    return v


def sampling_attrs(stated: dict[str, Any], where: str) -> dict[str, float]:
    """``stated`` attributes (name -> value) as floats, each by ``sampling_value``; ValueError
    ``"<where>: attribute <name>: must be ..."`` for the first that is not a finite number > 0, or for a
    ``pixel_size_A`` outside :data:`PIXEL_SIZE_A_RANGE`."""
    out = {}
    for name, value in stated.items():
        try:
            out[name] = sampling_value(value)
        except ValueError as e:
            raise ValueError(f"{where}: attribute {name}: {e}") from None
    if "pixel_size_A" in out and not PIXEL_SIZE_A_RANGE[0] <= out["pixel_size_A"] <= PIXEL_SIZE_A_RANGE[1]:
        lo, hi = PIXEL_SIZE_A_RANGE
        raise ValueError(
            f"{where}: attribute pixel_size_A: {out['pixel_size_A']:g} A is no detector pixel "
            f"(must be {lo:g} to {hi:g} A): correct the attribute"
        )
    return out
