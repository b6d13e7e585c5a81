"""Opening an HDF5 file for reading so that a damaged one fails at once and a live one can be followed.

Why: recordings used to be opened in SWMR read mode always. In that mode libhdf5 takes a metadata
checksum or end-of-file failure for a writer caught mid-update and retries each read up to 100 times
with an exponential back-off capped at 36 s (an hour per failed read, by design), inside C code where
Python's signal handlers cannot run: a recording cut short or with a few flipped bytes kept ``export``,
``denoise`` and ``replay --offline`` busy for more than 12 minutes, deaf to Ctrl-C and SIGTERM. Now:

* a file whose superblock says no writer has it open (status flags 0: closed cleanly, or never opened
  for SWMR) is opened plainly, where libhdf5 reads metadata once and a damaged file fails at once
  ("truncated file: eof = 100");
* a file a writer has open (a live recording, or one whose writer was killed, the flags still set) is
  opened in SWMR read mode, as before, but with :data:`READ_ATTEMPTS` metadata read attempts: libhdf5
  spreads its back-off over them (1 ns doubling), so a read that keeps failing gives up after about a
  second, while a writer's flush in progress is still waited for.

The read attempts are set through ``H5Pset_metadata_read_attempts``, which h5py does not expose: it is
looked up with ``ctypes`` in the very library h5py's extension is linked against (``dlsym`` on that
module searches its dependencies). Where that lookup fails (Windows), SWMR reads keep libhdf5's default.
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
from functools import cache
from typing import Any

import h5py

from sbd_stream.formats.safe_chunks import LIBHDF5_OWN

READ_ATTEMPTS = 30
"""Metadata read attempts in SWMR read mode: libhdf5's back-off doubles from 1 ns, so 30 attempts wait
about 1 s in all before a read fails (libhdf5's default for SWMR, 100, waits up to an hour)."""

CHECKED = {**LIBHDF5_OWN, 32000: "lzf"}
"""Filters whose decoders check their input: libhdf5's own and h5py's built-in LZF (liblzf built with
``CHECK_INPUT``, its output bounded by the chunk), which the project's simulated datasets use
(``training/sim/dataset.py``: the emulator opens them here): refusing LZF refused them."""

READ_SAFELY = ("raw", "denoised", "llr")
"""Top-level datasets read as frames, through ``safe_chunks.safe_dataset`` (a ``denoise`` / ``replay
--offline`` output's ``denoised``: bitshuffle-LZ4), as is every dataset named ``frames``; the same
names as ``recording.KINDS`` (not imported: that module imports this one)."""

SIGNATURE = b"\x89HDF\r\n\x1a\n"
WRITER_FLAGS = 0x1 | 0x4
"""The superblock's "open for write" and "open for SWMR write" status flags (versions 2 and 3)."""


def status_flags(path: str | os.PathLike) -> int:
    """The superblock's file consistency flags: non-zero while a writer has the file open (or was killed
    with it open); 0 for a file closed cleanly, a superblock version 0/1 (no flags), or no HDF5
    signature (the plain open then says what is wrong)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block here; h5py says what it is
            return 0
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            off = 0
            while off + 12 <= size:
                f.seek(off)
                head = f.read(12)
                if head[:8] == SIGNATURE:
                    return int(head[11]) if head[8] >= 2 else 0
                off = 512 if off == 0 else off * 2
    except OSError:
        return 0
    return 0


@cache
def _set_read_attempts() -> Any:
    """``H5Pset_metadata_read_attempts`` of the libhdf5 h5py uses, or None where it cannot be found."""
    try:
        fn = ctypes.CDLL(h5py.defs.__file__).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int64, ctypes.c_uint]  # hid_t is 64-bit since HDF5 1.10
    fn.restype = ctypes.c_int
    return fn


def _swmr_fapl() -> h5py.h5p.PropFAID:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    fn = _set_read_attempts()
    if fn is not None:
        fn(fapl.id, READ_ATTEMPTS)
    return fapl


def open_read(path: str | os.PathLike) -> h5py.File:
    """``path`` opened read-only: plainly when no writer has it open, else SWMR read, bounded retries.

    A plain open refused because a writer opened the file meanwhile ("already open for write") is
    tried again in SWMR read mode. Errors are h5py's (OSError mostly)."""
    if not status_flags(path) & WRITER_FLAGS:
        try:
            return h5py.File(path, "r")
        except OSError:
            if not status_flags(path) & WRITER_FLAGS:
                raise
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=_swmr_fapl())
    return h5py.File(fid)


def open_recording(path: str | os.PathLike) -> h5py.File:
    """Open a recording for reading, live, after a crash or closed (formats/hdf5_read.py: SWMR read mode
    where a writer has it open, with a bounded retry, so a damaged file fails within about a second).

    A file HDF5 opens but cannot read (a part a SIGKILL cut short while it was laid out: a 48-byte
    superblock; flipped bytes) raises h5py's RuntimeError or KeyError at the first look inside; it is an
    ``OSError`` here, as an unreadable file is everywhere else, so every reader ends in one line.

    A dataset other than frames that passes a filter outside libhdf5's own is refused here, before any
    read (:func:`foreign_filter`: ``ForeignFilter``)."""
    try:
        f = open_read(path)
    except OSError as e:
        raise OSError(f"{path}: not a readable HDF5 recording ({h5_reason(e)}; cut short or damaged?)") from e
    try:
        f.attrs.keys().__len__()
        "raw" in f  # noqa: B015 - touching the root group is the check
        foreign = foreign_filter(f)
    except (RuntimeError, KeyError, OSError) as e:
        f.close()
        raise OSError(f"{path}: not a readable HDF5 recording ({h5_reason(e)}; cut short or damaged?)") from e
    if foreign is not None:
        f.close()
        raise ForeignFilter(
            f"{path}: {foreign}, which the recorder never writes: not read, crafted or damaged"
        )
    return f


class ForeignFilter(OSError):
    """A recording refused by :func:`foreign_filter` (one line naming the file, dataset and filter)."""


def foreign_filter(f: h5py.File) -> str | None:
    """The first dataset of recording ``f``, other than its frames (``_frames``), whose filter pipeline
    holds a filter that is not libhdf5's own or LZF (:data:`CHECKED`), as "its dataset raw/seq
    passes HDF5 filter 32008 (bitshuffle)"; None where there is none.

    Why (session 32): frames are read through ``safe_chunks.safe_dataset``, but the per-row columns
    (``seq``, ``ts``, ``complete``, ``time``), ``meta`` bytes, the column tables, ``exposure_s``... are
    read by libhdf5 at a dozen places: a ``raw/seq`` recreated bitshuffle-LZ4 with a crafted chunk
    killed ``export``, ``replay`` (live and ``--offline``), ``emulate --source`` and ``denoise`` with
    SIGSEGV. The recorder writes those datasets with no filter (only frames are compressed),
    so one rule at the one place recordings are opened closes every reader. Datasets behind soft and
    external links, and the sources of virtual ones, are checked too: libhdf5 reads them alike."""
    links: list[tuple[bytes, int]] = []  # every link once, by its name (low level: 0.2 ms, not 5)
    f.id.links.visit(lambda n, info: links.append((n, info.type)), info=True)
    for raw, kind in links:
        name = raw.decode("utf-8", "replace")
        if kind == h5py.h5l.TYPE_HARD:  # frames are read through safe_chunks.safe_dataset
            if _frames(name) or h5py.h5o.get_info(f.id, raw).type != h5py.h5o.TYPE_DATASET:
                continue
            plist = h5py.h5d.open(f.id, raw).get_create_plist()
            why = _foreign(f[name]) if plist.get_layout() == h5py.h5d.VIRTUAL else _filters(plist)
            if why is not None:
                return f"its dataset {name} {why}"
            continue
        try:  # a soft or external link: what it names is read as its target
            obj = f.get(name)
        except (RuntimeError, KeyError, OSError):  # a loop or a dangling link: no dataset to read here;
            continue  # the reader that follows it says what is wrong, as before
        items: list[tuple[str, Any]] = [(name, obj)]
        if isinstance(obj, h5py.Group) and obj.file.id != f.id:  # another file's group: its datasets
            obj.visititems(lambda n, o, at=name, out=items: out.append((f"{at}/{n}", o)) if o else None)
        for where, ds in items:
            skip = not isinstance(ds, h5py.Dataset) or _frames(where)
            if not skip and (why := _foreign(ds)) is not None:
                return f"its dataset {where} {why}"
    return None


def _frames(name: str) -> bool:
    """Whether the dataset a reader opens as ``name`` holds frames (read through ``safe_dataset``)."""
    return name.rsplit("/", 1)[-1] == "frames" or name in READ_SAFELY


def _foreign(ds: h5py.Dataset) -> str | None:
    """What ``_filters`` says where ``ds`` (or, virtual, a source of it that can be
    opened: libhdf5 reads them alike) has a filter outside libhdf5's own; else None."""
    if ds.is_virtual:
        base = os.path.dirname(ds.file.filename)
        for src in ds.virtual_sources():
            file = ds.file.filename if src.file_name == "." else os.path.join(base, src.file_name)
            try:
                with h5py.File(file, "r") as g:
                    sub = g.get(src.dset_name)
                    why = _foreign(sub) if isinstance(sub, h5py.Dataset) and not sub.is_virtual else None
            except OSError:
                continue
            if why is not None:
                return f"{why} (its virtual source {src.file_name}:{src.dset_name})"
        return None
    return None if ds.chunks is None else _filters(ds.id.get_create_plist())


def _filters(dcpl: Any) -> str | None:
    """'passes HDF5 filter 32008 (bitshuffle)' for the first filter of ``dcpl`` not libhdf5's own."""
    for k in range(dcpl.get_nfilters()):
        fid, _flags, _cd, label = dcpl.get_filter(k)
        if int(fid) not in CHECKED:
            short = bytes(label).decode("ascii", "replace").split(";")[0].strip() or "unknown"
            return f"passes HDF5 filter {int(fid)} ({short})"
    return None


def h5_reason(e: BaseException) -> str:
    """The reason in an h5py error, without the call it names: "Unable to synchronously open file
    (truncated file: eof = 100, ...)" -> "truncated file: eof = 100, ..."."""
    text = str(e).strip("'\"")
    m = re.search(r"\(([^()]+)\)\s*$", text)
    return m.group(1) if m else text
