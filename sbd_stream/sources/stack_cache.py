"""Stacks kept open per process, so that a Dask worker opens a file once per job, not once per chunk.

Opening a TIFF written a page at a time walks every page's directory and checks the chain of pages
(``stack_tiff``): that costs time in proportion to the pages. A worker that opened the file again for
each 16-frame chunk spent time in proportion to the pages squared: reading 2,000 such frames took 61 s
in chunks against well under a second once open, and ``denoise`` under its default scheduler was 20x
slower than ``--scheduler none`` on them.

An entry is keyed by the file's identity (device, inode, size, modification time) as well as its path
and dataset, so a file replaced or rewritten between jobs is opened afresh. At most ``MAX_OPEN`` stacks
stay open, the least recently used closed first; ``close_all`` closes them at the end of a job (the
client runs it on long-lived workers). One lock serialises reads: tifffile's and h5py's handles are
not for concurrent threads, and a remote worker may run several.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sbd_stream.sources.stacks import FrameStack, open_stack

MAX_OPEN = 2
_LOCK = threading.Lock()
_OPEN: OrderedDict[tuple, FrameStack] = OrderedDict()


def _key(path: Path, dataset: str | None) -> tuple:
    st = os.stat(path)
    return str(path), dataset, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_rows(path: Path, dataset: str | None, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` of the stack at ``path`` (a writable copy), opening it only when this
    process has not got it open already (``open_stack``'s checks and errors, unchanged)."""
    with _LOCK:
        key = _key(path, dataset)
        stack = _OPEN.pop(key, None)
        if stack is None:
            stack = open_stack(path, dataset, warn=False)  # the client has warned about its layout
        _OPEN[key] = stack  # the most recently used last
        while len(_OPEN) > MAX_OPEN:
            _OPEN.popitem(last=False)[1].close()
        try:
            return np.array(stack.frames[start:stop])
        except BaseException:  # a damaged page: the next read opens the file again
            _OPEN.pop(key, None)
            stack.close()
            raise


def close_all() -> int:
    """Close every stack this process holds open; returns how many there were."""
    with _LOCK:
        n = len(_OPEN)
        while _OPEN:
            _OPEN.popitem()[1].close()
        return n
