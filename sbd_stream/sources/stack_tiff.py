"""Reading a TIFF as a stack of frames for offline ``denoise`` (and its whole array for evaluate-images).

Which pages are the frames: tifffile files a TIFF written one page at a time (``TiffWriter.write`` in
a loop, ``imwrite(..., append=True)``) as one series per page, and ``series[0]`` alone was read: a
3-frame stack was denoised as its first frame, exit 0. So every series of the file (thumbnails and
other reduced-resolution pages aside) is a run of frames when all have one shape and dtype, as ImageJ
opens them; series that differ are refused, naming them.

How they are read: an uncompressed contiguous stack is memory-mapped; anything else page by page
(``TiffPages``), decoding only the pages a batch asks for, so a compressed stack streams in bounded
memory. A decoder's error (a zlib / LZMA stream cut short was a 190-line traceback, exit 1) is one
``StackError`` naming the file and the frame. What the file declares is checked first: frame sizes and
count (``stack_headers.check_declared``), every page's data within the file, and the chain of pages
ending where the file does (a cut-short PackBits TIFF lost its last page's directory and was denoised
as 2 of its 3 frames, exit 0). A zlib or LZMA strip is decoded to no more than it holds (``tiff_strips``:
tifffile decodes it whole, unbounded; one strip of 1 GiB of zeros in a 1 MB file was read, a 2.1 GB peak).
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.limits import frame_problem
from sbd_stream.sources.stack_headers import StackError, check_declared, imread_cap, lzma_problem
from sbd_stream.sources.stack_units import LENGTH_UNITS_A, tiff_sampling
from sbd_stream.sources.tiff_strips import inflation_problem, read_page

__all__ = ["LENGTH_UNITS_A", "TiffPages", "frame_series", "open_tiff", "read_whole", "tiff_sampling"]

DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    ImportError,
    ArithmeticError,
    AssertionError,
    AttributeError,
)
"""What tifffile and its codecs raise on a damaged page (TiffFileError is a ValueError; imagecodecs'
errors are RuntimeErrors; zlib and lzma have their own). ImportError: tifffile lists ZSTD (50000,
34926) as decodable without imagecodecs, but its fallback imports Python 3.14's ``compression.zstd``
only when a page is decoded: a ZSTD TIFF was a ModuleNotFoundError traceback, exit 1. ArithmeticError:
tifffile divides by the tags it reads (an ImageWidth or RowsPerStrip of 0: ZeroDivisionError traceback).
AssertionError: tifffile asserts a page has a NumPy type while it finds the series (SampleFormat float with
BitsPerSample 1 or 12 has none: a traceback). AttributeError: tifffile hands a predictor 34892-34895
(floating point by 2 or 4) to ``imagecodecs.floatpred_decode``, absent from its fallback module."""
EVAL_ITEMSIZE = 8
"""Bytes a pixel takes once ``evaluate-images`` holds it (float64): what ``read_whole``'s cap counts."""
CODEC_HINT = "; `pip install imagecodecs` enables it"
LZMA_TIFF = 34925
"""TIFF's Compression tag for LZMA (an .xz stream a strip or tile)."""
LZMA_HEAD = 12 + 1024
"""Bytes of an .xz strip that hold its stream and first block header (at most 12 + 1024)."""


def open_tiff(path: Path) -> tuple[Any, dict[str, float], Any]:
    """(frames, sampling, closer) of a TIFF stack: frames is a memmap or a ``TiffPages``."""
    import tifffile

    tif = None
    try:
        tif = tifffile.TiffFile(path)
        series = frame_series(tif, path)
        sampling = tiff_sampling(tif, path)
        shape, dt = _stack_shape(series), np.dtype(series[0].dtype)
        compressed = int(getattr(series[0].keyframe, "compression", 1)) != 1
        try:
            check_declared(shape, dt, None if compressed else os.path.getsize(path))
        except ValueError as e:
            raise StackError(f"{path}: {e}{_hyperstack_hint(series[0])}") from None
        # the series chosen, not the file's first: a thumbnail first page was mapped as the stack
        index = next((k for k, s in enumerate(tif.series) if s is series[0]), None)
        if len(series) == 1 and not compressed and index is not None:
            try:
                mapped = tifffile.memmap(path, series=index, mode="r")
                tif.close()
                return mapped, sampling, None
            except ValueError:  # pages scattered through the file: read one at a time below
                pass
        frames = _paged(tif, series, shape, dt, path)
        if frames is None:  # a layout the page reader does not cover: decoded whole, within a cap
            declared = math.prod(shape) * dt.itemsize
            if declared > imread_cap():
                raise StackError(
                    f"{path}: a compressed TIFF of {declared} bytes decoded, more than half this machine's "
                    "memory; save it uncompressed (memory-mapped) or as HDF5"
                )
            pages = [p for s in series for p in s.pages if p is not None]
            if (problem := _lzma_problem(tif, pages, declared) or _inflation(tif, pages)) is not None:
                raise StackError(f"{path}: {problem}")
            try:
                arr = _whole(series)
            except DECODE_ERRORS as e:
                raise StackError(f"{path}: cannot decode its frames ({_why(e)})") from None
            tif.close()
            return arr, sampling, None
        return frames, sampling, tif.close
    except StackError:
        if tif is not None:
            tif.close()
        raise
    except (
        tifffile.TiffFileError,
        ValueError,
        IndexError,
        OSError,
        KeyError,
        struct.error,
        ArithmeticError,
        AssertionError,
    ) as e:
        # struct.error: a file cut short inside its header (a 4-byte "II*\0" was a traceback);
        # ArithmeticError: a zero ImageWidth, divided by while tifffile finds the series; AssertionError:
        # a float SampleFormat of 1 or 12 bits (no NumPy type), asserted there too
        if tif is not None:
            tif.close()
        raise StackError(f"{path}: not a readable TIFF ({_why(e)})") from e


def frame_series(tif: Any, path: Path | str) -> list[Any]:
    """The series that hold frames: all of one shape and dtype (a TIFF written a page at a time has one
    series per page), reduced-resolution pages (thumbnails, pyramid levels) left out."""
    series = [s for s in tif.series if not getattr(s.keyframe, "is_reduced", False)] or list(tif.series[:1])
    if not series:
        raise StackError(f"{path}: no image in this TIFF")
    for s in series:  # interleaved samples (...YXS): a colour picture, frames of width 3 if stacked, and
        # to evaluate-images (channel-last) three images. Planar samples (SYX) are frames: tifffile writes
        # a (3, H, W) array that way (abTEM's to_tiff of a 3-image defocus series), each plane an image.
        if s.axes.endswith("S"):
            raise StackError(
                f"{path}: a colour TIFF (shape {tuple(s.shape)}, axes {s.axes}); a counted frame has one "
                "value per pixel: save the frames as a greyscale stack"
            )
    kinds = {(tuple(s.shape), np.dtype(s.dtype).str) for s in series}
    if len(kinds) > 1 or (len(series) > 1 and len(series[0].shape) not in (2, 3)):
        shown = ", ".join(f"{tuple(s.shape)} {np.dtype(s.dtype)}" for s in series[:4])
        more = ", ..." if len(series) > 4 else ""
        raise StackError(
            f"{path}: holds {len(series)} image series ({shown}{more}), one stack only when all are "
            "frames of one shape and type: save one stack of equal frames per file"
        )
    return series


def read_whole(path: Path) -> np.ndarray:
    """A TIFF's whole array: its one series, or its equal series stacked (``evaluate-images``: clean
    images, small). Raises ``ValueError`` with one line on a damaged or mixed file."""
    import tifffile

    try:  # the directory read in too: a SamplesPerPixel of 0 was an IndexError traceback there
        with tifffile.TiffFile(path) as tif:
            series = frame_series(tif, path)
            _check_whole(tif, series, path)
            return _whole(series)
    except DECODE_ERRORS as e:
        if isinstance(e, StackError):
            raise
        raise ValueError(f"cannot decode its images ({_why(e)})") from None


def _check_whole(tif: Any, series: list[Any], path: Path) -> None:
    """The declared images within the frame limits and memory, and every page's data within the file,
    before any is decoded.

    Why: a 0.8 MB zlib TIFF declaring one 20000 x 20000 image (a strip of zeros inflates 1000-fold) was
    decoded whole and turned to float64, a MemoryError traceback (3 GiB) or the OOM killer; a
    StripByteCounts of 4 GB in a 26 kB file had tifffile allocate that much to read it (MemoryError).
    ``open_tiff`` checks the same for ``denoise``."""
    size = os.path.getsize(path)
    for k, p in enumerate(tif.pages):
        end = max((o + c for o, c in zip(p.dataoffsets, p.databytecounts, strict=False)), default=0)
        if end > size:
            raise StackError(f"{path}: page {k}: its data run to byte {end} of a {size}-byte file (damaged?)")
    shape = tuple(int(n) for n in series[0].shape)
    if len(shape) >= 2 and (problem := frame_problem(shape[-2:], np.dtype(series[0].dtype).itemsize)):
        raise StackError(f"{path}: {problem}")
    pixels = len(series) * math.prod(shape)
    if pixels * EVAL_ITEMSIZE > imread_cap():
        raise StackError(
            f"{path}: declares {pixels} pixels, {pixels * EVAL_ITEMSIZE} bytes as float64, more than half "
            "this machine's memory; evaluate smaller images"
        )
    declared = pixels * np.dtype(series[0].dtype).itemsize
    if (problem := _lzma_problem(tif, list(tif.pages), declared) or _inflation(tif, tif.pages)) is not None:
        raise StackError(f"{path}: {problem}")


def _inflation(tif: Any, pages: Any) -> str | None:
    """The first of ``pages`` whose zlib / LZMA strips decode to more than they hold (``tiff_strips``),
    or None: for the readers that decode every page at once, all counted first."""
    fh = tif.filehandle
    return next((why for k, p in enumerate(pages) if (why := inflation_problem(fh, p, f"page {k}"))), None)


def _whole(series: list[Any]) -> np.ndarray:
    """The series' arrays decoded and joined along the frame axis (``frame_series``: all alike)."""
    arrays = [s.asarray() for s in series]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays[0].ndim == 3 else np.stack(arrays)


def _hyperstack_hint(series: Any) -> str:
    """What a stack of more than 3 axes holds, by tifffile's axis letters (ImageJ: T frames, Z slices,
    C channels), so the refusal says which to split; empty for a 2- or 3-axis series."""
    axes = str(getattr(series, "axes", ""))
    if len(axes) <= 3:
        return ""
    return (
        f" (axes {axes}: an ImageJ hyperstack or a multi-dimensional image); save one run of frames per "
        "file (ImageJ: Image > Hyperstacks > Reduce Dimensionality)"
    )


def _stack_shape(series: list[Any]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in series[0].shape)
    if len(series) == 1:
        return shape
    return (len(series), *shape) if len(shape) == 2 else (len(series) * shape[0], *shape[1:])


def _paged(tif: Any, series: list[Any], shape: tuple[int, ...], dt: np.dtype, path: Path) -> TiffPages | None:
    """A page-by-page reader of the series when each page holds whole frames, after checking the file
    holds every page's data, the chain of pages is whole and the codec is there; else None."""
    import tifffile

    if len(shape) not in (2, 3):
        return None
    pages = [p for s in series for p in s.pages]
    if not pages or any(p is None for p in pages):
        return None
    h, w = shape[-2:]
    per = math.prod(int(n) for n in pages[0].shape[:-2])
    n = shape[0] if len(shape) == 3 else 1
    if any(tuple(p.shape) != tuple(pages[0].shape) for p in pages) or tuple(pages[0].shape[-2:]) != (h, w):
        return None
    if len(pages) * per != n or per < 1:
        return None
    if (page_bytes := per * h * w * dt.itemsize) > imread_cap():  # one page is decoded whole
        raise StackError(
            f"{path}: a TIFF page of {page_bytes} bytes decoded, more than half this machine's memory; "
            "save the frames one page each, or as HDF5"
        )
    size = os.path.getsize(path)
    for k, p in enumerate(pages):
        end = max((o + c for o, c in zip(p.dataoffsets, p.databytecounts, strict=False)), default=0)
        if end > size:
            raise StackError(
                f"{path}: frame {k * per}: its data run to byte {end} of a {size}-byte file (cut short?)"
            )
    if (problem := _chain_problem(tif, size) or _lzma_problem(tif, pages, page_bytes)) is not None:
        raise StackError(f"{path}: {problem}")
    compression = pages[0].keyframe.compression
    if int(compression) != 1:
        try:
            tifffile.TIFF.DECOMPRESSORS[compression]
        except KeyError as e:
            raise StackError(f"{path}: not a readable TIFF ({_why(e)})") from None
    return TiffPages(tif, pages, per, (n, h, w), dt, str(path))


def _lzma_problem(tif: Any, pages: list[Any], bound: int) -> str | None:
    """Why an LZMA-compressed (34925) page's strip or tile asks liblzma for more memory than one decoding
    to ``bound`` bytes needs (``stack_headers.lzma_problem``), or None. Why (session 35): tifffile
    decodes such a strip with ``lzma.decompress``, no memory limit, so a strip declaring a 1.5 GiB
    dictionary had it reserved. Only each strip's first bytes (the headers) are read here."""
    fh = tif.filehandle
    for k, p in enumerate(pages):
        if int(getattr(p, "compression", 1)) != LZMA_TIFF:
            continue
        for offset, count in zip(p.dataoffsets, p.databytecounts, strict=False):
            fh.seek(offset)
            if count and (problem := lzma_problem(fh.read(min(int(count), LZMA_HEAD)), bound)):
                return f"page {k}: {problem}, its frames hold {bound} bytes; not decoded (crafted?)"
    return None


def _chain_problem(tif: Any, size: int) -> str | None:
    """Where the chain of page directories breaks: the last page's pointer to a next one must be 0.

    tifffile logs a pointer past the end of the file and stops there, so the pages after it (a copy
    cut short: the last page's directory) were silently missing."""
    t = tif.tiff
    n = len(tif.pages)  # the whole chain walked
    last = tif.pages[n - 1]
    fh = tif.filehandle
    fh.seek(last.offset)
    raw = fh.read(t.tagnosize)
    if len(raw) < t.tagnosize:
        return f"page {n}: its directory runs past the end of the file (cut short?)"
    count = struct.unpack(t.tagnoformat, raw)[0]
    fh.seek(last.offset + t.tagnosize + count * t.tagsize)
    raw = fh.read(t.offsetsize)
    nxt = struct.unpack(t.offsetformat, raw)[0] if len(raw) == t.offsetsize else -1
    if nxt == 0:
        return None
    return (
        f"the chain of pages breaks after page {n} (a pointer to byte {nxt} of a {size}-byte file): cut "
        "short or damaged, the pages after it are lost"
    )


class TiffPages:
    """A lazily indexed (N, H, W) stack over a TIFF's pages (each ``per`` whole frames): ``[i:j]``
    decodes the pages those frames lie in, and a decoder's error names the file and the frame."""

    def __init__(
        self, tif: Any, pages: list[Any], per: int, shape: tuple[int, int, int], dt: np.dtype, path: str
    ):
        self.tif, self.pages, self.per, self.path = tif, pages, per, path
        self.shape, self.dtype = shape, dt
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | int) -> np.ndarray:
        if isinstance(index, slice):
            rows = range(*index.indices(self.shape[0]))
        else:
            i = int(index) + (self.shape[0] if int(index) < 0 else 0)
            return self[i : i + 1][0]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for j, i in enumerate(rows):
            out[j] = self._page(i // self.per, i)[i % self.per]
        return out

    def _page(self, k: int, frame: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == k:
            return self._cached[1]
        # a zlib / LZMA page decoded here, each strip within its size, when it is read (tifffile decodes a
        # strip whole, with no bound); any other page, its strips counted so first, by tifffile
        page, fh = self.pages[k], self.tif.filehandle
        try:
            arr = read_page(fh, page, f"{self.path}: frame {frame}")
            if arr is None and (problem := inflation_problem(fh, page, f"frame {frame}")) is not None:
                raise StackError(f"{self.path}: {problem}")
            if arr is None:
                arr = page.asarray(maxworkers=1)
        except StackError:
            raise
        except DECODE_ERRORS as e:
            raise StackError(f"{self.path}: frame {frame}: cannot decode ({_why(e)})") from None
        if arr.size != self.per * self.shape[1] * self.shape[2]:
            raise StackError(
                f"{self.path}: frame {frame}: decoded {arr.size} pixels where its page declares "
                f"{self.per} x {self.shape[1]} x {self.shape[2]} (damaged or cut short)"
            )
        arr = arr.reshape(self.per, *self.shape[1:])
        self._cached = (k, arr)
        return arr


def _why(e: BaseException) -> str:
    """A reader's error on one line, with the way out when a codec is missing."""
    msg = " ".join((str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).split())
    msg = msg or type(e).__name__
    if isinstance(e, zlib.error | lzma.LZMAError) or "truncated" in msg or "incomplete" in msg:
        msg = f"{type(e).__name__}: {msg}; damaged or cut short"
    if isinstance(e, ArithmeticError):  # tifffile divided by a tag: ImageWidth or RowsPerStrip 0
        msg = f"{msg}: a size tag of 0 or out of range; damaged"
    if isinstance(e, AssertionError):  # tifffile's own check of the tags: float of 1 or 12 bits
        msg = "tifffile's check of its tags failed (AssertionError: no NumPy type for its samples?); damaged"
    if isinstance(e, ImportError):  # a codec tifffile lists but cannot load (ZSTD without imagecodecs)
        return f"its compression's decoder is missing ({msg}){CODEC_HINT}"
    return msg + (CODEC_HINT if "imagecodecs" in msg else "")
