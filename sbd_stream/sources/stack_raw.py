"""Frames stored whole and in C order in a file (NPY, MRC), read by explicit reads, not a memory map.

Apart from ``stacks.py`` so that the MRC reader (``stack_mrc.py``) can use it below ``stacks.py``.
"""

from __future__ import annotations

import operator
import os
import threading
from pathlib import Path

import numpy as np

from sbd_stream.sources.stack_headers import StackError

__all__ = ["RawFrames"]


class RawFrames:
    """An (N, H, W) stack stored whole and in C order from ``offset`` on (NPY, MRC): each ``[i:j]`` one
    explicit read of those frames into a new array, checked against what the file still holds.

    Why not a memory map: a file cut short while it was read (a copy still arriving, an input
    truncated or replaced) made the map's next page fault a SIGBUS, which ended ``denoise`` at once,
    with no message and its temporary output left behind. A read that comes back short is one
    ``StackError`` naming the file and the frame. Memory stays bounded (a batch at a time), and the
    bytes are copied once, as from a map. Reads are serialised (a Dask worker may run several threads).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.dtype = Path(path), int(offset), np.dtype(dtype)
        self.shape = (1, *shape) if len(shape) == 2 else tuple(shape)  # a 2-D image: a stack of one
        self.frame_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close(), kept for every read
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if not isinstance(index, slice):
            i = operator.index(index)
            i = i + self.shape[0] if i < 0 else i
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"frame {index} of {self.shape[0]}")
            return self[i : i + 1][0]
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            return np.stack([self[i] for i in range(start, stop, step)]) if start != stop else self[0:0]
        out = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
        with self._lock:
            self._read_into(out.reshape(-1).view(np.uint8).data, start)  # .data: memoryview(ndarray), typed
        return out

    def _read_into(self, view: memoryview, start: int) -> None:
        got, where = 0, self.offset + start * self.frame_bytes
        while got < len(view):
            frame = start + got // self.frame_bytes
            try:
                self._fh.seek(where + got)
                k = self._fh.readinto(view[got:])
            except OSError as e:
                raise StackError(f"{self.path}: frame {frame}: cannot read ({e})") from None
            if not k:
                size = os.fstat(self._fh.fileno()).st_size
                declared = self.offset + len(self) * self.frame_bytes
                raise StackError(
                    f"{self.path}: frame {frame}: the file ends early (it holds {size} bytes now, its header "
                    f"declares {declared}): was it cut short or replaced while being read?"
                )
            got += k

    def close(self) -> None:
        self._fh.close()
