"""What an NPY, MRC or TIFF header declares, checked before a byte of the frames is mapped or read.

Why: the readers trusted the header. An NPY shape of (-5, 64, 64) or an MRC with nx = ny = nz = 2^31 - 1
raised OverflowError inside ``mmap``; a 200-byte TIFF declaring 65000 x 65000 pixels could not be
memory-mapped and fell back to ``tifffile.imread``, which allocated 7.9 GiB. Each function here reads
the header alone, checks the declared frames against the wire format's limits
(``formats/limits.py``) and, where the layout is uncompressed, the declared bytes against the file's
size, and raises ``ValueError`` with one line (``stacks.py`` names the file). A TIFF's pages are
checked in ``stack_tiff.py`` with ``check_declared``.
"""

from __future__ import annotations

import lzma
import math
import os
import tokenize
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sbd_stream.formats.limits import check_dtype, count_problem, frame_problem

__all__ = [
    "StackError", "Voxel", "channel_last_note", "check_declared", "check_dtype", "imod_unsigned",
    "imread_cap", "lzma_memlimit", "lzma_problem", "mrc_declared", "mrc_pixel_size", "mrc_transposed",
    "mrc_voxel", "npy_declared",
]  # fmt: skip

NPY_MAX_HEADER = 10_000
"""numpy's own limit without ``allow_pickle`` (``np.load``'s ``max_header_size``)."""
IMOD_STAMP = 1146047817
"""IMOD's ``imodStamp``: with it, ``imodFlags`` bit 0 says whether mode-0 bytes are signed."""
LZMA_PRESET_DICT = 64 << 20
"""The dictionary of xz's largest preset (``-9``, ``-9e``): the most a numcodecs ``LZMA`` chunk declares."""
LZMA_OVERHEAD = 1 << 20
"""Memory liblzma's decoder takes beside the dictionary (64 kB for LZMA2 at -9; BCJ / delta filters less)."""


class StackError(ValueError):
    """The input is not a usable stack of frames; the message says what is wrong and how to fix it.

    Defined here, below the readers (``stacks.py``, ``stack_tiff.py``, ``stack_hdf5.py``), so each can
    raise it; ``stacks.py`` re-exports it where callers have always imported it from."""


def check_declared(shape: tuple[int, ...], dt: np.dtype, data_bytes: int | None = None) -> None:
    """A (frames, H, W) or (H, W) stack of ``dt`` within the limits; ``data_bytes``: what the file holds
    for it (uncompressed layouts), which the declared size must not pass."""
    check_dtype(dt)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a (frames, height, width) stack, got shape {tuple(shape)}")
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"the header declares a negative size {tuple(shape)}")
    if any(int(s) == 0 for s in shape):
        raise ValueError(f"the stack is empty (shape {tuple(shape)})")
    if (problem := frame_problem(tuple(shape[-2:]), dt.itemsize)) is not None:
        raise ValueError(problem)
    n = int(shape[0]) if len(shape) == 3 else 1
    if (problem := count_problem(n)) is not None:
        raise ValueError(problem)
    declared = math.prod(int(s) for s in shape) * dt.itemsize
    if data_bytes is not None and declared > data_bytes:
        raise ValueError(
            f"the header declares {tuple(int(s) for s in shape)} {dt} ({declared} bytes) but the file "
            f"holds {max(0, data_bytes)} bytes of data (cut short, or not what it claims)"
        )


def _one_line(e: BaseException) -> str:
    """The first line of an error (numpy's header errors run to three, with advice for its own API)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def npy_declared(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an NPY file from its header, checked against the file's size."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dt = read(fh, max_header_size=NPY_MAX_HEADER)
            offset = fh.tell()
        check_dtype(np.dtype(dt))  # before the shape: an object array is a pickle, whatever its size
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # numpy tokenizes a version 1/2 header
        # first: a header dict of "{{{{" raised tokenize.TokenError past every check (a traceback)
        why = "its header is no readable dict" if isinstance(e, tokenize.TokenError) else _one_line(e)
        raise ValueError(f"not a plain numeric NPY array ({why})") from None
    check_declared(tuple(shape), np.dtype(dt), os.path.getsize(path) - offset)
    return tuple(shape), np.dtype(dt)


def mrc_declared(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(nz, ny, nx) and dtype of an MRC file from its 1024-byte header, checked against its size
    (extended header included: an ``nsymbt`` of 2^31 - 1 had mrcfile try to read 2 GiB)."""
    from mrcfile import utils
    from mrcfile.dtypes import HEADER_DTYPE

    with open(path, "rb") as fh:
        raw = fh.read(HEADER_DTYPE.itemsize)
    if len(raw) < HEADER_DTYPE.itemsize:
        raise ValueError("not a readable MRC file (shorter than its 1024-byte header)")
    header: Any = np.frombuffer(raw, dtype=HEADER_DTYPE).reshape(())
    if bytes(header["map"])[:3] != b"MAP":
        raise ValueError("not a readable MRC file (no MAP id in its header)")
    try:
        order = utils.byte_order_from_machine_stamp(header["machst"])
        header = header.view(HEADER_DTYPE.newbyteorder(order))  # the same bytes, read in the file's order
        mode = int(header["mode"])
        dt = np.dtype(np.uint8) if mode == 101 else np.dtype(utils.dtype_from_mode(mode))  # 101: 4-bit
    except ValueError as e:
        raise ValueError(f"not a readable MRC file ({_one_line(e)})") from None
    nx, ny, nz, ext = (int(header[k]) for k in ("nx", "ny", "nz", "nsymbt"))
    if min(nx, ny, nz) < 1 or ext < 0:
        raise ValueError(f"the MRC header declares nx={nx} ny={ny} nz={nz} nsymbt={ext}: sizes must be > 0")
    data = os.path.getsize(path) - HEADER_DTYPE.itemsize - ext
    if data < 0:
        raise ValueError(f"the MRC header declares a {ext}-byte extended header, more than the file holds")
    if mode == 101:  # 4-bit, two pixels a byte: compare the packed size
        check_declared((nz, ny, nx), np.dtype(np.uint8), None)
        if ((nx + 1) // 2) * ny * nz > data:
            raise ValueError(f"the MRC header declares {nz}x{ny}x{nx} 4-bit pixels but the file holds less")
    else:
        check_declared((nz, ny, nx), dt, data)
    return (nz, ny, nx), dt


def imod_unsigned(header: Any) -> bool:
    """Whether an MRC header's mode-0 bytes are unsigned by IMOD's convention: ``imodStamp`` (bytes
    152-155, in mrcfile's ``extra2``) set and ``imodFlags`` bit 0 (bytes are signed) clear, as IMOD and
    SerialEM write summed counts.

    mrcfile always maps mode 0 to int8 (MRC2014); such a file's counts of 128-255 became -128..-1 and
    were denoised as negative values."""
    try:
        if int(header["mode"]) != 0:
            return False
        stamp, flags = np.frombuffer(bytes(header["extra2"]), dtype=header.dtype["mode"], count=2, offset=40)
    except (KeyError, ValueError, IndexError, TypeError):
        return False
    return int(stamp) == IMOD_STAMP and not int(flags) & 1


def lzma_memlimit(bound: int) -> int:
    """The most memory liblzma may reserve to decode an lzma chunk of ``bound`` bytes: the larger of the
    dictionary of xz's largest preset (``-9`` / ``-9e``: 64 MiB) and the smallest dictionary size an
    .xz header can state (2^n or 3 * 2^(n-1) bytes) that holds the whole chunk, and ``LZMA_OVERHEAD``.

    Why (session 35): the decoder reserves the dictionary its header declares (up to 4 GiB) before any
    byte is decoded, whatever the chunk's size: a 352-byte chunk declaring 1.5 GiB had 1.5 GiB reserved
    (it can fail, or count against RLIMIT_AS / a container's limit). A legitimate chunk never needs
    more: numcodecs' ``LZMA`` at any preset (0..9, extreme too) declares at most 64 MiB (liblzma then
    needs 64 MiB and 64 kB), and a dictionary larger than the chunk holds nothing more (LZMA2 refers
    back only into the bytes already decoded), so a writer sizing it to the chunk is read too."""
    return max(LZMA_PRESET_DICT, _dict_at_least(bound)) + LZMA_OVERHEAD


def _dict_at_least(n: int) -> int:
    """The smallest dictionary size an .xz LZMA2 header can state (2^k or 3 * 2^(k-1)) of ``n`` or more."""
    k = max(n - 1, 1).bit_length()  # 2**k >= n
    three = 3 << (k - 2) if k >= 2 else 1 << k
    return three if three >= n else 1 << k


def lzma_problem(head: bytes, bound: int) -> str | None:
    """Why the .xz / .lzma stream beginning with ``head`` (its first bytes: the headers) asks liblzma
    for more memory than a stream decoding to ``bound`` bytes needs (``lzma_memlimit``), or None (a
    damaged stream too: its decoder says so when it is decoded). One byte is decoded, under the limit,
    so that liblzma reads the block header and checks the dictionary before reserving it."""
    try:
        lzma.LZMADecompressor(lzma.FORMAT_AUTO, lzma_memlimit(bound)).decompress(head, max_length=1)
    except lzma.LZMAError as e:
        # CPython's one message for LZMA_MEMLIMIT_ERROR (Modules/_lzmamodule.c): the header asked more
        if "Memory usage limit" in str(e):
            over = lzma_memlimit(bound) - LZMA_OVERHEAD
            return f"an lzma stream declares a dictionary of over {over} bytes"
    return None


def imread_cap() -> int:
    """Most bytes a compressed TIFF may decode to: ``tifffile.imread`` holds the whole stack in memory,
    so half the machine's memory (8 GiB where it cannot be told)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def mrc_pixel_size(voxel_size: Any) -> dict[str, float]:
    """``pixel_size_A`` from an MRC header's ``voxel_size`` (A), when set; non-square pixels refused
    (``ValueError``, one line without the path: each reader names the file).

    Why: only the X size was read, so a file of 0.06 x 0.12 A pixels was binned as if square, a
    2x error along Y, without a word; a TIFF with unequal resolutions has always been refused."""
    try:
        x, y = float(voxel_size.x), float(voxel_size.y)
    except (AttributeError, TypeError, ValueError):
        return {}
    if not (math.isfinite(x) and x > 0):
        return {}
    if math.isfinite(y) and y > 0 and abs(x - y) > 1e-3 * x:
        raise ValueError(
            f"non-square pixels ({x:.4g} A wide, {y:.4g} A high, from its MRC voxel size); the engine works "
            "on square pixels: resample the frames to square ones"
        )
    return {"pixel_size_A": x}


def mrc_transposed(header: Any) -> bool:
    """Whether an MRC's sections are stored transposed: True for ``mapc, mapr, maps = 2, 1, 3`` (columns
    along Y, rows along X), False for the usual 1, 2, 3 (or 0, 0, 0: unset, as old writers leave it).
    Any other order puts the sections across X or Y (a volume in another axis order): ``ValueError``.

    Why: mrcfile hands the data in stored order whatever the header says, and ``denoise`` read such a
    file as stored: every frame transposed against how the header (and ChimeraX, which honours it) has
    it, and a (3, 2, 1) volume's X slices taken as frames, without a word."""
    order = tuple(int(header[k]) for k in ("mapc", "mapr", "maps"))
    if order in ((1, 2, 3), (0, 0, 0)):
        return False
    if order == (2, 1, 3):
        return True
    if sorted(order) != [1, 2, 3]:
        raise ValueError(f"its header's mapc, mapr, maps = {order} is no order of the axes 1, 2, 3 (damaged)")
    raise ValueError(
        f"its header's mapc, mapr, maps = {order}: the sections lie across {'XYZ'[order[2] - 1]}, not Z (a "
        "volume in another axis order); frames are sections along Z: save it with mapc, mapr, maps = 1, 2, 3"
    )


class Voxel(NamedTuple):
    """An MRC voxel size in A along X, Y, Z (read as mrcfile's ``voxel_size`` is, by ``.x`` / ``.y``)."""

    x: float
    y: float
    z: float


def mrc_voxel(header: Any) -> Voxel:
    """(x, y, z) voxel size in A from an MRC header, ``cella`` / ``mx, my, mz``; NaN where a sampling
    count is 0 or less (mrcfile's ``voxel_size`` divided by zero there, with NumPy's warning on stderr).
    A ``cella`` of 0 (pixel size unknown, the default of most writers) gives 0: nothing stated."""
    cella = header["cella"]
    out = []
    for axis, m in zip("xyz", ("mx", "my", "mz"), strict=True):
        n, length = int(header[m]), float(cella[axis])
        out.append(length / n if n > 0 and math.isfinite(length) else float("nan"))
    return Voxel(*out)


def channel_last_note(shape: tuple[int, ...]) -> str | None:
    """A warning when a 3-D stack looks like images kept channel-last, ``(H, W, n)``, else None.

    Why: MATLAB, prismatic and Dr. Probe keep a series as ``(H, W, n)``; read along the first axis, a
    ``(128, 160, 3)`` array was denoised as 128 frames of 160 x 3 pixels, exit 0, without a word
    (``evaluate-images`` reads such arrays channel-last; ``denoise`` keeps frames first, as documented).
    """
    if len(shape) != 3:
        return None
    n, h, w = shape
    if w < 32 <= min(n, h) and w < n:
        return (
            f"the stack's shape {tuple(shape)} is read as {n} frames of {h} x {w} pixels; if it holds {w} "
            f"images of {n} x {h} (channel-last, as MATLAB keeps them), save it as "
            "np.moveaxis(a, -1, 0) (frames first)"
        )
    return None
