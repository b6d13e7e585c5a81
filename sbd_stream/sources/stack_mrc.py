"""MRC images and image stacks for ``sbd-stream denoise``: which bytes are frames, of which type, and the
pixel size the header states.

- Modes 0, 1, 2, 6, 12 (and the others mrcfile maps to a NumPy type) are read as stored; mode 0 is
  MRC2014's signed bytes unless IMOD's stamp and flags say unsigned (``imod_unsigned``).
- Mode 101 is IMOD's 4-bit counts, two pixels a byte, the first in the low 4 bits, each line padded to a
  whole byte: SerialEM saves K2 / K3 counting frames so. mrcfile has no type for it and the file was
  refused ("Unrecognised mode '101'"); it is unpacked here to uint8 counts 0-15.
- ``voxel_size`` (A, ``cella`` / ``mx, my``) is the pixel size when set (a ``cella`` of 0: nothing
  stated) and a TEM pixel (``stack_units.plausible_pixel``); non-square pixels are refused
  (``mrc_pixel_size``).
- The axis order ``mapc, mapr, maps``: 1, 2, 3 as stored; 2, 1, 3 (columns along Y) each section
  transposed to rows along Y (``Transposed``); sections across X or Y refused (``mrc_transposed``).
- Every section along Z is a frame, whatever ``ispg`` says (mrcfile writes 1, a volume, by default;
  RELION's ``.mrcs`` and IMOD's stacks 0); a volume stack (``ispg`` 401+, 4-D) is refused.

Frames are read by explicit reads (``RawFrames``), so a file cut short while it is read is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.sources.stack_headers import (
    StackError,
    imod_unsigned,
    mrc_declared,
    mrc_pixel_size,
    mrc_transposed,
    mrc_voxel,
)
from sbd_stream.sources.stack_raw import RawFrames
from sbd_stream.sources.stack_units import plausible_pixel

__all__ = ["MODE_4BIT", "Nibbles", "Transposed", "open_mrc"]

MODE_4BIT = 101
"""IMOD's mode for 4-bit unsigned data, two pixels a byte."""


class Nibbles:
    """Mode-101 frames: each ``[i:j]`` reads the packed bytes (``RawFrames``) and unpacks them to uint8,
    the low 4 bits first, the line's padding nibble (odd ``nx``) dropped."""

    def __init__(self, packed: RawFrames, nx: int) -> None:
        self.packed, self.nx = packed, int(nx)
        self.shape = (packed.shape[0], packed.shape[1], self.nx)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        raw = self.packed[index]
        out = np.empty((*raw.shape[:-1], 2 * raw.shape[-1]), np.uint8)
        out[..., 0::2] = raw & 0x0F
        out[..., 1::2] = raw >> 4
        return out[..., : self.nx]

    def close(self) -> None:
        self.packed.close()


class Transposed:
    """Frames stored with columns along Y (``mapc, mapr = 2, 1``): each ``[i:j]`` reads them and hands
    them back with rows along Y, as the header orients them."""

    def __init__(self, stored: RawFrames | Nibbles) -> None:
        self.stored = stored
        n, rows, cols = stored.shape
        self.shape, self.dtype = (n, cols, rows), stored.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(self.stored[index], -1, -2))

    def close(self) -> None:
        self.stored.close()


def open_mrc(path: Path) -> tuple[Any, dict[str, float]]:
    """``(frames, sampling)`` of an MRC file: ``frames[i:j]`` gives arrays, ``frames.close()`` ends it.

    Raises ``StackError`` (one line naming the file) for a header that declares what the file cannot
    hold, a mode without a count type, or non-square pixels."""
    import mrcfile
    from mrcfile import utils

    try:
        (nz, ny, nx), _ = mrc_declared(path)  # the header's sizes against the limits and the file, first
        with mrcfile.open(path, mode="r", permissive=False, header_only=True) as mrc:
            header = mrc.header
            transposed = mrc_transposed(header)  # before the pixel size: a (3, 2, 1) file's X, Y are no plane
            stated = mrc_pixel_size(mrc_voxel(header)).get("pixel_size_A", 0.0)
            sampling = plausible_pixel(stated, "its MRC voxel size", path)
            offset = int(header.nbytes) + int(header.nsymbt)
            if int(header.mode) == MODE_4BIT:
                packed = RawFrames(path, offset, (nz, ny, (nx + 1) // 2), np.dtype(np.uint8))
                frames: RawFrames | Nibbles = Nibbles(packed, nx)
            else:
                dt = np.dtype(np.uint8) if imod_unsigned(header) else utils.data_dtype_from_header(header)
                frames = RawFrames(path, offset, utils.data_shape_from_header(header), dt)
    except ValueError as e:
        raise StackError(f"{path}: {e}") from None
    except OSError as e:
        raise StackError(f"{path}: not a readable MRC file ({e})") from e
    return (Transposed(frames) if transposed and len(frames.shape) == 3 else frames), sampling
