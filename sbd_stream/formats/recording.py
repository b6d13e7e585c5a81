"""One acquisition's HDF5 file (format ``sbd-recording/1``, NeXus): creating it, appending frames, closing.

Kept apart from the recorder thread (sinks/recorder.py), which decides *which* file a frame goes to
(rolls, idle and open-file bounds); this module only knows how one file is laid out and written, so
a reader of the layout needs only this page. See docs/service.md for the layout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - registers bitshuffle/LZ4 for every reader of a recording
import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.formats import column_table, frame_meta, nexus
from sbd_stream.formats.compression import filter_args as _compression  # shared with denoise outputs
from sbd_stream.formats.dectris_codec import HEADER
from sbd_stream.formats.group_templates import GroupTemplates
from sbd_stream.formats.hdf5_read import open_recording
from sbd_stream.formats.recording_parts import (  # noqa: F401 - re-exported: readers import them from here
    UNREADABLE,
    free_path,
    part_attr,
    part_number,
    recording_parts,
)
from sbd_stream.formats.recording_read import (  # noqa: F401 - re-exported: readers import them from here
    SAMPLING_ATTRS,
    frames_key,
    is_recording,
    iter_recorded,
    recorded_detector,
    uniform_parts,
)
from sbd_stream.formats.row_writes import Appended, RowColumns

log = logging.getLogger(__name__)

FORMAT = "sbd-recording/1"
KINDS = ("raw", "denoised", "llr")


WRITE_LIBVER = ("v110", "v110")
"""File-format bounds of everything written here: HDF5 1.10's, the least that SWMR needs. ``"latest"``
means the linked library's newest format, and with h5py >= 3.16 (HDF5 2.0) every filtered dataset then
got a layout message that HDF5 1.10-1.14 cannot read: MATLAB, Fiji, h5dump and any h5py < 3.16 saw the
frames of a gzip recording as "bad version number for layout message"."""


GROUPS = GroupTemplates(WRITE_LIBVER)
"""Each part's NXdata groups, copied from ``nexus.add_data``'s layout made once per frame shape, dtype and
settings: building them object by object was most of a new part's cost (formats/group_templates.py)."""


BSHUF_FILTER_ID = 32008
BSHUF_LZ4 = 2  # bitshuffle filter's cd_values[4]: 2 = LZ4 after the shuffle (0 = none, 3 = zstd)


def _takes_detector_chunks(ds: h5py.Dataset) -> bool:
    """True when a bitshuffle-LZ4 chunk framed as the HDF5 filter frames it can be stored as is.

    The filter pipeline must be exactly one bitshuffle filter with LZ4 (any block size: the filter
    reads a chunk's block size from its own 12-byte header when decoding) and the dataset little-endian,
    as DECTRIS detectors send. Checked on the dataset actually created, not on the settings.
    """
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1 or ds.dtype.byteorder not in ("<", "=", "|"):
        return False
    fid, _flags, cd, _name = plist.get_filter(0)
    return fid == BSHUF_FILTER_ID and len(cd) > 4 and cd[4] == BSHUF_LZ4 and np.little_endian


def safe_name(acq: str) -> str:
    """The file name stem for ``acq``: ``[A-Za-z0-9._-]`` only, at most 120 characters, never hidden.

    Leading dots become ``_`` as well: ``.x`` or ``..`` made a hidden file (``ls`` and file browsers
    skip it, so a recording seemed missing), and a stem of dots only is no name to hand a user.
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", acq)[:120]
    return re.sub(r"^\.+", lambda m: "_" * len(m.group()), name) or "acq"


Handles = tuple[h5py.Dataset, tuple[int, ...], RowColumns, Appended | None]
"""A kind's frames, their frame shape, per-row datasets and appended entries (``AcqFile._datasets``)."""
APPENDED = {"llr": column_table.TABLE, "raw": frame_meta.BYTES}
"""Each kind's dataset of per-row entries appended one row after another (None in an older part)."""


class AcqFile:
    """The open file of one acquisition part and its append positions.

    Its raw ``shape`` and ``raw_dtype`` are fixed at creation: a frame of another shape or dtype goes
    to a new part (the recorder rolls), because writing it here would cast it (data altered) or
    fail half-way through a row. A part is created whole or not at all: it is laid out under a hidden
    temporary name and named when complete (:func:`_create_whole`), so neither a failed layout nor a
    process killed during it leaves a file without its raw datasets in a recording.
    ``kinds`` are the kinds this part takes; ``n`` the rows of each kind present (a ``denoised`` or
    ``llr`` group is added with its first frame, see :meth:`_add_kind`).
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int],
        raw_dtype: np.dtype,
        s: RecordSettings,
        attrs: dict,
        reopen: bool = False,
    ) -> None:
        self.path = path
        attrs = {"t0": float(attrs.get("created", 0.0)), **attrs}  # the time axis' origin, s since epoch
        self.acq = str(attrs.get("acq", ""))
        self.shape = shape
        self.raw_dtype = np.dtype(raw_dtype)
        self.last_used = time.monotonic()
        self.since_flush = 0
        self.comp = _compression(s.compression)
        self.kinds = ["raw"] + (["denoised"] if s.record_denoised else []) + (["llr"] if s.record_llr else [])
        self.dtypes = {"denoised": np.dtype(s.denoised_dtype), "llr": np.dtype(np.float32)}
        if reopen:
            self._reopen(s)
            return
        self._handles: dict[str, Handles] = {}
        _create_whole(path, lambda f: self._lay_out(f, attrs))
        self.f = _open_rw(path)
        self.n: dict[str, int] = {"raw": 0}
        self.table_at = 0  # the llr column table's next entry (formats/column_table.py)
        self.meta_at = 0  # the raw meta's next byte (formats/frame_meta.py)
        self.t0 = float(attrs["t0"])
        self.bslz4 = s.compression == "bitshuffle-lz4"
        self.direct = {k: self._takes_chunks(k) for k in self.n}
        self.f.swmr_mode = True

    def _lay_out(self, f: h5py.File, attrs: dict) -> None:
        for k, v in attrs.items():
            f.attrs[k] = v
        nexus.create_entry(f, attrs)
        GROUPS.add(f, "raw", self.shape, self.raw_dtype, self.comp)

    @classmethod
    def reopen(cls, path: Path, s: RecordSettings) -> AcqFile:
        """A part closed earlier (idle, too many open files), opened again to append its late outputs.

        Appending continues after the last complete row of each kind (a row half-written when the
        file was closed is overwritten, as ``complete`` never counted it).
        """
        with open_recording(path) as f:
            raw = f["raw/frames"]
            shape, dtype = (int(raw.shape[1]), int(raw.shape[2])), raw.dtype
            acq = str(f.attrs.get("acq", ""))
        return cls(path, shape, dtype, s, {"acq": acq}, reopen=True)

    def _reopen(self, s: RecordSettings) -> None:
        self._handles = {}
        self.f = _open_rw(self.path)
        self.n = {k: len(self.f[k]["complete"]) for k in KINDS if k in self.f}
        # after the last complete row's table: a table a crash left half-counted is written over
        self.table_at = column_table.table_end(self.f["llr"], self.n["llr"]) if "llr" in self.n else 0
        self.meta_at = frame_meta.bytes_end(self.f["raw"], self.n["raw"]) if "raw" in self.n else 0
        if nexus.ENTRY not in self.f:  # the first layout had every group from the start
            self.kinds = list(self.n)
        self.t0 = float(self.f.attrs.get("t0", 0.0))
        self.bslz4 = s.compression == "bitshuffle-lz4"
        self.direct = {k: self._takes_chunks(k) for k in self.n}
        self.f.swmr_mode = True

    def _add_kind(self, kind: str) -> None:
        """Add the ``kind`` group with its first frame: SWMR cannot create objects, so leave it briefly.

        The file is closed (complete, flushed), reopened without SWMR, the group copied in from its
        template (``GROUPS``) and SWMR switched on again: once per kind and part (the reopen is ~0.2 ms,
        benchmarks/bench_part_roll.py; building the group was ~2.5 ms). Creating every group up front
        left parts with empty ``denoised`` / ``llr`` groups (after a roll, with denoising off), whose
        empty axes stop RosettaSciIO's NeXus reader (``hs.load``) with an IndexError.
        """
        self.f.close()
        self._handles = {}  # the handles died with the file
        self.f = _open_rw(self.path)
        GROUPS.add(self.f, kind, self.shape, self.dtypes.get(kind, np.float32), self.comp)
        self.f.flush()
        self.f.swmr_mode = True
        self.n[kind] = 0
        self.direct[kind] = self._takes_chunks(kind)

    def _datasets(self, kind: str) -> Handles:
        """``kind``'s frames, per-row datasets and appended entries (llr table, raw meta; None: none, an
        older part), looked up once per open file (an h5py lookup per column and frame cost ~2 ms of GIL a
        frame at 40 Hz), with their write buffers and dataspaces (formats/row_writes.py)."""
        got = self._handles.get(kind)
        if got is None:
            g = self.f[kind]  # a part made by an earlier layout may lack ``time`` / ``frame`` / its own
            own = [name for name, _, _ in nexus.KIND_COLUMNS.get(kind, ())]
            names = [n for n in ("frame", "time", "seq", "ts", *own) if n in g] + ["complete"]
            appended = g.get(APPENDED[kind]) if kind in APPENDED else None
            rows = RowColumns(kind, [(n, g[n]) for n in names])
            fr, tab = g["frames"], None if appended is None else Appended(appended)
            got = self._handles[kind] = (fr, tuple(int(n) for n in fr.shape[1:]), rows, tab)
        return got

    def _takes_chunks(self, kind: str) -> bool:
        """Whether ``kind``'s frames can be stored as bitshuffle-LZ4 chunks compressed elsewhere."""
        return self.bslz4 and _takes_detector_chunks(self.f[kind]["frames"])

    def append(
        self,
        kind: str,
        seq: int,
        ts: float,
        data: np.ndarray,
        chunk: bytes | None = None,
        table: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        **own: float,
    ) -> bool:
        """Append one frame; True when ``chunk`` was stored as is (no recompression). ``own``: ``kind``'s
        own row columns (``nexus.KIND_COLUMNS``; their fill value where not given; older parts lack
        them); ``table``: an llr row's (K, 4) detected columns, appended to ``llr/columns``; ``meta``: a
        raw row's producer meta, appended to ``raw/meta`` (None: not recorded)."""
        if kind not in self.n:
            self._add_kind(kind)
        fr, frame_shape, cols, tab = self._datasets(kind)
        i = self.n[kind]
        fr.id.set_extent((i + 1, *frame_shape))
        direct = chunk is not None and self._write_chunk(fr, i, data, chunk, kind, frame_shape)
        if not direct:
            fr[i] = data
        values = {"frame": i, "time": ts - self.t0, "seq": seq, "ts": ts, "complete": 1}
        values.update({name: own.get(name, fill) for name, _, fill in nexus.KIND_COLUMNS.get(kind, ())})
        end = self.table_at
        if table is not None and tab is not None:
            end += column_table.write_table(tab, self.table_at, table)  # before ``complete``: see below
            values.update(n_columns=end - self.table_at, columns_start=self.table_at)
        if kind == "raw" and meta is not None and tab is not None:  # also before ``complete``
            values.update(frame_meta.write_row(tab, self.meta_at, meta))
        meta_at = self.meta_at + max(0, int(values.get("meta_length", 0)))
        cols.write(i, values)  # ``complete`` last: a row counts once everything else is written
        self.n[kind] = i + 1
        self.table_at = end
        self.meta_at = meta_at
        self.since_flush += 1
        self.last_used = time.monotonic()
        return direct

    def _write_chunk(
        self,
        fr: h5py.Dataset,
        i: int,
        data: np.ndarray,
        chunk: bytes,
        kind: str = "raw",
        frame_shape: tuple[int, ...] | None = None,
    ) -> bool:
        """Store a precompressed chunk (the detector's, or the recorder pool's) for frame ``i``; False
        (write ``data`` instead) on any mismatch."""
        if not self.direct.get(kind) or data.dtype != fr.dtype or data.shape != (frame_shape or fr.shape[1:]):
            return False
        if len(chunk) < HEADER.size or HEADER.unpack_from(chunk, 0)[0] != data.nbytes:
            return False
        try:
            fr.id.write_direct_chunk((i, 0, 0), bytes(chunk))
        except (OSError, RuntimeError, ValueError, TypeError):
            log.warning("direct chunk write failed; recompressing instead", exc_info=True)
            return False
        return True

    def flush(self) -> None:
        self.f.flush()
        self.since_flush = 0

    def close(self) -> None:
        try:
            self.f.close()
        except Exception:
            log.warning("closing %s failed", self.path, exc_info=True)

    def abandon(self) -> None:
        """Give up a part whose write failed (disk full, quota, I/O error) WITHOUT closing it, for good.

        Why: after HDF5 failed to write, closing the file fails half-way ("Can't decrement id ref
        count"), and when Python later frees the half-closed objects libhdf5 crashes the whole process
        (a segfault under ``ulimit -f``: live lane, publisher and metrics gone with the recording, and
        again at exit). So this object (and the h5py file and datasets it holds) gets one extra
        reference that is never released: never freed, not even at interpreter exit. A bounded leak:
        one open file and its caches per failed part, and a failure ends that acquisition's recording.
        """
        import ctypes

        global _ABANDONED
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self))
        _ABANDONED += 1
        log.warning("left %s open after its write failed (closing it could crash the process)", self.path)


_ABANDONED = 0


def _open_rw(path: Path) -> h5py.File:
    """``path`` opened for writing; without HDF5's file lock where another process holds the file.

    Why: every part is opened read-write outside SWMR mode after readers can see it (when named, when
    it gains its ``denoised`` / ``llr`` group, when reopened for late outputs or after
    ``max_open_files``), and HDF5's lock makes that open fail with ``BlockingIOError`` while any other
    process holds the file open to read, SWMR readers included: a viewer or a researcher's
    ``h5py.File(part, "r", swmr=True)`` stopped the recording of that acquisition for good (an I/O
    error, every later frame dropped; audit h30). A SWMR writer holds no lock once SWMR is on anyway.
    The lock is tried first: a file opened without it cannot be opened again in this process with it
    ("file locking flag values don't match"), which in-process readers of a part still open would meet.
    """
    try:
        return h5py.File(path, "r+", libver=WRITE_LIBVER)
    except BlockingIOError:  # another process reads it: write all the same (readers retry, docs)
        log.info("%s is held open by a reader; writing without HDF5's file lock", path)
        return h5py.File(path, "r+", libver=WRITE_LIBVER, locking=False)


def _create_whole(path: Path, lay_out: Callable[[h5py.File], None]) -> None:
    """Make ``path`` under a hidden temporary name and give it its name once laid out.

    A process killed while HDF5 lays a file out (SIGKILL, power) leaves a stub that no reader can open;
    under the temporary name (``.<name>.<pid>.creating``) it is no part of any recording. The name is
    given by a hard link, which fails where ``path`` exists: a recording is never overwritten, not even
    by a second recorder that chose the same free name at the same moment.

    The temporary name is predictable, so it is created exclusively (``O_EXCL``, which refuses any
    existing name, a symbolic link included), after removing what a crash of a process with this pid
    left there: ``"w"`` followed a link another user of a shared folder left at that name and
    truncated its target (audit h30). A link that cannot be removed (not ours, sticky folder) makes
    the create fail (``FileExistsError``), its target untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    with contextlib.suppress(OSError):
        tmp.unlink()  # a stale temporary (or a link planted there): removed, never followed
    try:
        with h5py.File(tmp, "x", libver=WRITE_LIBVER) as f:
            lay_out(f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: rename, after the same check
            if path.exists():
                raise FileExistsError(f"{path} exists: a recording is never overwritten") from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def abandoned_parts() -> int:
    """How many parts this process abandoned (``AcqFile.abandon``); the console entry ends the process
    without interpreter shutdown when there are any (``sbd_stream.cli.app.main``)."""
    return _ABANDONED
