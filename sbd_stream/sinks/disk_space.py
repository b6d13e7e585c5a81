"""The recorder's disk checks: refuse a frame before the disk is full, and tell a full disk from other errors.

HDF5 does not reliably report ENOSPC at the write call (the chunk cache and metadata cache defer the
failing writes, whose errors then surface at close or not at all), so the free space is checked up
front, one statvfs per frame; and h5py words a full disk in several ways, so the error that does
surface is classified here, for ``sbd_record_errors_total{kind="disk_full"|"io"}``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["check_space", "is_disk_full"]


def check_space(directory: Path, min_free_bytes: int, nbytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` when fewer than max(``min_free_bytes``, 4 x ``nbytes``) are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    need = max(min_free_bytes, 4 * nbytes)
    if free < need:
        raise OSError(errno.ENOSPC, f"only {free} bytes free in {directory}, need {need}")


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write error means no space (disk, file size or quota), as h5py and the OS word it."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space" in text or "errno = 28" in text or "file too large" in text
