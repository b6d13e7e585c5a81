"""Crafted stacks and recordings whose headers lie about their size, and a memory-capped runner.

Shared by tests/e2e/test_hostile_stacks.py and test_hostile_recordings.py. Each file is a few hundred
bytes that declares gigabytes to terabytes: before the fix the readers allocated what was declared
(MemoryError, or 18.6 GiB actually touched), so every check runs in a child process under
``RLIMIT_AS`` and a timeout, never in the test process itself.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

MEMORY_CAP = 6 * 1024**3
"""Address space of a child check (torch's CLI imports map ~2-3 GB; a hostile file asks for far more)."""


def run_capped(args: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    """``python ARGS`` in a child limited to ``MEMORY_CAP`` of address space; the result with text output."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
        env=env,
    )


def run_snippet(code: str, timeout: float = 120.0) -> dict:
    """Run ``code`` (which prints one JSON object last) memory-capped; that object."""
    r = run_capped(["-c", code], timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a command that refused its input (exit 2, no traceback)."""
    out = r.stdout + r.stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1, out[-3000:]
    after = r.stderr.splitlines()[r.stderr.splitlines().index(lines[0]) + 1 :]
    assert all(not ln.strip() or re.match(r"\d{4}-\d\d-\d\d ", ln) for ln in after), out[-3000:]  # one line
    assert not any(w in out for w in ("Traceback", "MemoryError", "Unable to allocate")), out[-3000:]
    return lines[0]


# --- stacks --------------------------------------------------------------------------------------------
def npy(
    path: Path, shape: tuple[int, ...], descr: object = "<u2", header_pad: int = 0, version: int = 1
) -> Path:
    """An NPY whose header declares ``shape`` over 64 bytes of data (``header_pad``: extra header bytes)."""
    h = repr(
        {
            "descr": descr,
            "fortran_order": False,
            "shape": shape,
            **({"x": "A" * header_pad} if header_pad else {}),
        }
    )
    raw = h.encode("latin1")
    total = (10 if version == 1 else 12) + len(raw) + 1
    raw += b" " * ((64 - total % 64) % 64) + b"\n"
    size = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    path.write_bytes(b"\x93NUMPY" + bytes((version, 0)) + size + raw + b"\x00" * 64)
    return path


def mrc(path: Path, nx: int, ny: int, nz: int, mode: int = 1, nsymbt: int = 0) -> Path:
    """An MRC2014 header declaring nx x ny x nz of ``mode`` over 64 bytes of data."""
    h = bytearray(1024)
    struct.pack_into("<4i", h, 0, nx, ny, nz, mode)
    struct.pack_into("<3i", h, 28, nx, ny, nz)
    struct.pack_into("<3f", h, 40, float(nx), float(ny), float(nz))
    struct.pack_into("<3i", h, 64, 1, 2, 3)
    struct.pack_into("<i", h, 92, nsymbt)
    h[208:212], h[212:216] = b"MAP ", b"\x44\x44\x00\x00"
    struct.pack_into("<i", h, 196, 20140)
    path.write_bytes(bytes(h) + b"\x00" * 64)
    return path


def tiff(path: Path, w: int, h: int) -> Path:
    """A baseline little-endian 16-bit TIFF declaring w x h pixels in one strip, in ~200 bytes."""
    entries = [(256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 4, h), (279, 4, 2**32 - 1)]  # fmt: skip
    ifd = 8 + 64
    b = bytearray(b"II*\x00" + struct.pack("<I", ifd)) + b"\x00" * 64 + struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        b += struct.pack("<HHI", tag, typ, 1) + (
            struct.pack("<I", val) if typ == 4 else struct.pack("<HH", val, 0)
        )
    path.write_bytes(bytes(b + struct.pack("<I", 0)))
    return path


def h5(path: Path, shape: tuple[int, ...], **attrs: object) -> Path:
    """An HDF5 ``data`` of ``shape`` (chunked: nothing stored), or 2 real frames when ``shape`` is ()."""
    with h5py.File(path, "w") as f:
        if shape:
            f.create_dataset("data", shape=shape, dtype="uint16", chunks=(1, 64, 64))
        else:
            f.create_dataset("data", data=np.ones((2, 64, 64), np.uint16))
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


# --- recordings ----------------------------------------------------------------------------------------
def craft_rows(src: Path, dst: Path, rows: int = 10**12) -> Path:
    """A copy of recording ``src`` whose raw frames and per-row datasets were resized to ``rows`` rows
    (extents only: nothing is written, the file stays as small as it was)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        g = f["entry/raw"]
        for name in ("frames", "seq", "ts", "frame", "time", "complete"):
            if name in g:
                g[name].resize(rows, axis=0)
    return dst


def craft_frame(src: Path, dst: Path, side: int = 100_000) -> Path:
    """A copy of recording ``src`` whose raw frames are ``side`` x ``side`` (chunked: nothing stored)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        n = f["entry/raw/frames"].shape[0]
        del f["entry/raw/frames"]
        f.create_dataset("entry/raw/frames", shape=(n, side, side), dtype="uint16", chunks=(1, 1024, 1024))
    return dst
