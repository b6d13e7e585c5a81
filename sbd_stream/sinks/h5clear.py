"""``h5clear -s`` in Python: clear the "open for (SWMR) write" flags a killed writer leaves in a file.

A recording whose writer was killed stays readable in SWMR read mode (``open_recording``, silx), but
readers that open without SWMR (HyperSpy's NeXus reader, MATLAB, older h5py) refuse it: "file is
already open for write (may use <h5clear file> to clear file consistency flags)". ``h5clear -s FILE``
(Debian/Ubuntu package ``hdf5-tools``, conda ``hdf5``) clears them; where it is not installed,
``python -m sbd_stream.sinks.h5clear FILE ...`` does the same: it zeroes the superblock's file
consistency flags and rewrites the superblock checksum (Jenkins' lookup3, as HDF5 computes it). Only
superblock versions 2 and 3 carry these flags (every file written for SWMR does: superblock 3). Never
run it on a file a writer still has open.
"""

from __future__ import annotations

import os
import stat
import struct
import sys

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' ``hashlittle`` (lookup3), HDF5's ``H5_checksum_lookup3``."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
        a = (a - c) & _M ^ _rot(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M ^ _rot(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 4)
        b = (b + a) & _M
        n -= 12
        i += 12
    if n == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + bytes(12 - n))
    a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
    c = (c ^ b) - _rot(b, 14) & _M
    a = (a ^ c) - _rot(c, 11) & _M
    b = (b ^ a) - _rot(a, 25) & _M
    c = (c ^ b) - _rot(b, 16) & _M
    a = (a ^ c) - _rot(c, 4) & _M
    b = (b ^ a) - _rot(a, 14) & _M
    c = (c ^ b) - _rot(b, 24) & _M
    return c


def _superblock(f) -> int:
    """Offset of the superblock: 0, 512, 1024, 2048, ... (after a user block)."""
    size = os.fstat(f.fileno()).st_size
    off = 0
    while off + 8 <= size:
        f.seek(off)
        if f.read(8) == SIGNATURE:
            return off
        off = 512 if off == 0 else off * 2
    raise ValueError("not an HDF5 file (no superblock signature)")


def clear_status_flags(path: str | os.PathLike) -> bool:
    """Zero the file consistency flags; True if any were set (False: nothing to do)."""
    with open(path, "r+b") as f:
        base = _superblock(f)
        f.seek(base)
        head = f.read(12)
        if len(head) < 12:
            raise ValueError("cut short inside its superblock")
        version, size_offsets = head[8], head[9]
        if version < 2:
            raise ValueError(f"superblock version {version} keeps no status flags (nothing to clear)")
        end = 12 + 4 * size_offsets  # base, extension, end-of-file and root group addresses
        f.seek(base)
        block = bytearray(f.read(end + 4))
        if len(block) < end + 4:
            raise ValueError("cut short inside its superblock")
        if struct.unpack_from("<I", block, end)[0] != lookup3(bytes(block[:end])):
            raise ValueError("superblock checksum does not match: not touching this file")
        if block[11] == 0:
            return False
        block[11] = 0
        struct.pack_into("<I", block, end, lookup3(bytes(block[:end])))
        f.seek(base)
        f.write(block)
    return True


USAGE = "usage: python -m sbd_stream.sinks.h5clear [-s] RECORDING.nxs ..."


def _clear_one(path: str) -> str:
    """One file's line; a file that cannot be cleared raises ``ValueError`` with the reason."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    if stat.S_ISDIR(mode):
        raise ValueError("is a folder; name the recording's files (<acq>*.nxs)")
    if not stat.S_ISREG(mode):
        raise ValueError("not a regular file")
    try:
        return "flags cleared" if clear_status_flags(path) else "no flags set"
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None


def main(argv: list[str]) -> int:
    """``h5clear -s`` for each file named: one line each (``PATH: flags cleared`` / ``no flags set`` on
    stdout, ``error: PATH: why`` on stderr), every file tried; exit 0, or 2 when any file failed.

    Why: a missing file (a glob that matched nothing), a folder, a FIFO or a file that is no HDF5 was a
    traceback and exit 1, and the files after it were never tried. ``-s`` is accepted, as h5clear's."""
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    files = [a for a in argv if a != "-s"]
    if not files:
        print(USAGE, file=sys.stderr)
        return 2
    failed = 0
    for p in files:
        try:
            line = _clear_one(p)
        except ValueError as e:
            print(f"error: {p}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{p}: {line}")
    return 2 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
