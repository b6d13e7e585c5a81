"""The resumable partial output of an offline Dask job: opened or resumed, written chunk by chunk, let go.

``OUT.partial`` (HDF5, SWMR writer) holds the frames; ``OUT.partial.json`` (the sidecar) holds the run's
fingerprint and ``frames_done``, the prefix that is on disk. Kept apart from ``offline_dask`` (the
cluster and the client) because what makes a resume safe is all here:

* ``frames_done`` moves only after the chunk's frames are flushed *and fsynced*, and the sidecar is
  itself fsynced before its rename: a flush is not an fsync, and after a power loss the sidecar's
  rename could reach the disk before the frames it counts.
* A resume trusts the sidecar only as far as the partial agrees: chunks (one frame each) missing
  below ``frames_done`` step it back to the first missing one. A sidecar that is not this job's (not
  an object, unreadable) is reported as such and the job starts over.
* A full disk: free space is checked before each chunk (HDF5 reports ENOSPC late, from its caches, and
  sometimes only at close), so the usual case stops with the file consistent at its last flush. When
  HDF5 fails anyway (the disk filled between the check and the write, a file size limit), the file is
  let go without another byte written (``_let_go``): closing it normally flushed again, failed half-way,
  and libhdf5 then crashed the process at exit (SIGSEGV / SIGBUS after the error line). Its superblock
  may then record an end beyond what reached the disk; a resume extends the file to it (the tail is
  frames past ``frames_done``, written again anyway) instead of starting over.
* A resume keeps the partial's compression: frames of one dataset share one filter pipeline, so a
  ``--compression`` given that is not the partial's is refused in one line (``CompressionDiffers``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.recording import WRITE_LIBVER
from sbd_stream.sinks.disk_space import check_space, is_disk_full
from sbd_stream.sources.stacks import let_go_h5

__all__ = ["CompressionDiffers", "OutputFull", "PartialWriter", "open_partial", "write_error", "write_state"]

log = logging.getLogger(__name__)

SPACE_MARGIN = 1 << 20  # HDF5 metadata and the sidecar, beyond a chunk's (uncompressed) frames


class OutputFull(OSError):
    """The output's disk is full, or writing the partial failed: one line naming the output, saying
    how far the job got and that the same command resumes."""


def write_state(path: Path, state: dict) -> None:
    """The sidecar, replaced atomically: written to ``.tmp``, fsynced, renamed, its folder fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # created exclusively: a link left at this name is never followed
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as fh:
        fh.write(json.dumps(state, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _one_line(e: BaseException) -> str:
    """An HDF5 error in a few words: its text runs over lines and names every field of the write."""
    if isinstance(e, OSError) and e.strerror:
        text = " ".join(e.strerror.split()) + (f": {e.filename}" if e.filename else "")
    else:
        text = " ".join(str(e).split())
    if (m := re.search(r"error message = '([^']*)'", text)) is not None:
        return m.group(1)
    return text if len(text) <= 200 else text[:197] + "..."


def write_error(output: Path, partial: Path, done: int, total: int, e: BaseException) -> OutputFull:
    """The one line for a failed write: a full disk said so, what was written and how to go on."""
    where = f"{done} of {total} frames written to {partial}"
    if is_disk_full(e):
        return OutputFull(
            f"{output}: no space left on device ({_one_line(e)}); {where}: free space and run the same "
            "command to resume"
        )
    return OutputFull(
        f"{output}: cannot write {partial} ({_one_line(e)}); {where}: run the same command to resume"
    )


class PartialWriter:
    """Writes chunks into the open partial in frame order and records each in the sidecar once on disk."""

    def __init__(self, f: Any, partial: Path, sidecar: Path, fp: dict, output: Path, done: int) -> None:
        self.f, self.partial, self.sidecar, self.fp, self.output = f, partial, sidecar, fp, output
        self.done, self.total = done, int(fp["shape"][0])
        self.ds, self.bad = f["denoised"], f.get("replaced_pixels")  # absent in an older version's partial
        self.closed = False

    def write(self, a: int, b: int, arr: np.ndarray, replaced: np.ndarray) -> None:
        """Frames [a, b): checked for space, written, flushed, fsynced, then counted in the sidecar."""
        try:
            check_space(self.partial.parent, arr.nbytes + SPACE_MARGIN, 0)
        except OSError as e:  # nothing of this chunk written: the file is as its last flush left it
            self.close()
            raise write_error(self.output, self.partial, self.done, self.total, e) from None
        try:
            self.ds[a:b] = arr
            if self.bad is not None:
                self.bad[a:b] = replaced
            self.f.flush()
            os.fsync(self.f.id.get_vfd_handle())
        except (OSError, RuntimeError) as e:  # h5py raises either for a failed write or flush
            self.closed = True
            let_go_h5(self.f)  # first: the datasets' own close would flush to the disk again
            self.ds = self.bad = None
            raise write_error(self.output, self.partial, self.done, self.total, e) from None
        try:
            write_state(self.sidecar, {"fingerprint": self.fp, "frames_done": b})
        except OSError as e:
            self.close()
            raise write_error(self.output, self.partial, self.done, self.total, e) from None
        self.done = b

    def replaced(self) -> np.ndarray:
        return np.asarray(self.bad[:]) if self.bad is not None else np.zeros(0, np.int64)

    def close(self) -> None:
        """Close the file (once); a close that fails lets it go instead."""
        if self.closed:
            return
        self.closed = True
        try:
            self.f.close()  # closes the datasets with it
        except (OSError, RuntimeError):
            let_go_h5(self.f)
        self.ds = self.bad = None


def _sidecar_state(sidecar: Path) -> tuple[dict, Any] | str:
    """(fingerprint, frames_done) from the sidecar, or why it could not be read."""
    try:
        state = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        return _one_line(e)
    if not isinstance(state, dict):
        return f"not a JSON object but {type(state).__name__}"
    fp = state.get("fingerprint")
    if not isinstance(fp, dict):
        return "no fingerprint object"
    return fp, state.get("frames_done")


def _present_prefix(ds: Any, done: int) -> int:
    """How many frames from 0 have their chunk in the file, up to ``done`` (chunks are one frame)."""
    step = ds.chunks[0]
    have: set[int] = set()
    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(lambda info: have.add(info.chunk_offset[0]))
    else:  # pragma: no cover - h5py < 3.8
        for i in range(ds.id.get_num_chunks()):
            have.add(ds.id.get_chunk_info(i).chunk_offset[0])
    for start in range(0, done, step):
        if start not in have:
            return start
    return done


def _reopen(partial: Path) -> Any:
    """The partial for appending; one cut short by a failed write (its superblock records an end
    beyond the file's) is first extended to that end, the bytes that never reached the disk as zeros."""
    import h5py

    from sbd_stream.sinks.h5clear import clear_status_flags

    clear_status_flags(partial)  # the "open for write" flags the killed writer left
    try:
        return h5py.File(partial, "r+", libver=WRITE_LIBVER)
    except OSError as e:
        m = re.search(r"truncated file: eof = (\d+),.*stored_eof = (\d+)", str(e))
        if m is None or int(m.group(2)) <= int(m.group(1)) or partial.stat().st_size != int(m.group(1)):
            raise
        log.info("%s ends at byte %s, its superblock at %s: extending it", partial, m.group(1), m.group(2))
        os.truncate(partial, int(m.group(2)))
        return h5py.File(partial, "r+", libver=WRITE_LIBVER)


def _resumable(partial: Path, sidecar: Path, fp: dict, compression: str | None) -> tuple[Any, int] | None:
    """The partial and the frame to continue at when the sidecar and the partial match this run.

    A matching partial keeps the compression it was started with (``compression`` None: not given); a
    ``compression`` given that is not that one is refused (``_other_compression``), never mixed into
    one dataset nor started over: the frames on disk are the job's, and ``--no-resume`` is the way to
    drop them."""
    n, size = int(fp["shape"][0]), int(fp["chunk_frames"])
    state = _sidecar_state(sidecar)
    if isinstance(state, str):
        log.warning("%s could not be read (%s): starting over", sidecar, state)
        return None
    old, done = state
    differ = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
    if differ:
        log.warning(
            "%s was made with other inputs or settings (%s): starting over", partial, ", ".join(differ)
        )
        return None
    if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= n:
        log.warning("%s: frames_done %r is not a frame count of this input: starting over", sidecar, done)
        return None
    try:
        f = _reopen(partial)
    except (OSError, ValueError) as e:
        if is_disk_full(e):  # extending it failed: starting over would destroy what a rerun can use
            output = partial.with_name(partial.name.removesuffix(".partial"))
            raise write_error(output, partial, done, n, e) from None
        log.warning("cannot reopen %s (%s): starting over", partial, _one_line(e))
        return None
    try:
        if "denoised" not in f or f["denoised"].shape != tuple(fp["shape"]):
            log.warning("%s holds no %s frames to go on from: starting over", partial, fp["shape"])
        else:
            _other_compression(f, partial, compression)
            have = _present_prefix(f["denoised"], done)
            if have < done:
                log.warning("%s holds frames up to %d only, not %d: going on from there", partial, have, done)
            if have < n:
                have -= have % size  # chunks start at multiples of the chunk size
            f.swmr_mode = True
            return f, have
    except CompressionDiffers:
        f.close()
        raise
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("cannot read %s (%s): starting over", partial, _one_line(e))
    f.close()
    return None


class CompressionDiffers(ValueError):
    """``--compression`` names another compression than the partial's frames have: one line saying both
    ways on (refused before a frame is written, the partial kept)."""


def _other_compression(f: Any, partial: Path, compression: str | None) -> None:
    """Refuse a ``compression`` given that is not the partial's (read from its filters: a partial from
    before the attribute says too); None keeps the partial's."""
    from sbd_stream.formats.compression import stored_compression

    had = stored_compression(f["denoised"])
    if compression is None or compression == had:
        return
    output, had = partial.name.removesuffix(".partial"), had or "(a filter of its own)"
    raise CompressionDiffers(
        f"{partial} was started with --compression {had}: give --compression {had} (or none of it) to "
        f"resume it, or --no-resume to start {output} over with --compression {compression}"
    )


def _index_attrs(ds: Any) -> None:
    """A recording's per-row columns say what they hold, as in the recording (``formats/frame_meta.py``)."""
    from sbd_stream.formats import frame_meta

    name = ds.name.lstrip("/")
    if name in frame_meta.LONG_NAMES:
        ds.attrs["long_name"] = frame_meta.LONG_NAMES[name]
    if name in ("exposure_s", "ts"):
        ds.attrs["units"] = "s"
    elif name == frame_meta.BYTES:
        ds.attrs["long_name"] = "each frame's producer meta, compact ASCII JSON, one row after another"
        ds.attrs["content_type"] = "application/json"
        ds.attrs["row_index"] = "meta_start, meta_length"


def open_partial(
    partial: Path, sidecar: Path, fp: dict, attrs: dict, resume: bool, index: dict | None = None,
    compression: str | None = None,
) -> tuple[Any, int]:  # fmt: skip
    """The partial output (SWMR writer) and the frame to continue at: 0 unless a matching run was cut off.

    ``compression``: a new partial's (None: bitshuffle-lz4); a resumed one keeps its own, and one
    given that differs is refused (``CompressionDiffers``, ``_resumable``).

    ``index``: per-frame datasets written whole with a new file (a recording's ``seq``, ``ts``, ``meta``...).
    Call it holding the output's lock: a partial found is then no other job's.

    The partial's and the sidecar's names are predictable and a job never makes either a symbolic
    link: one found there is removed, never followed. ``"w"`` truncated the target of a link someone
    left at ``OUT.partial`` in a shared folder, and the finished job renamed the link over the output
    (audit h30); a new partial is created exclusively for the same reason."""
    import h5py

    from sbd_stream.formats.compression import check_compression
    from sbd_stream.sources.stacks import create_output

    check_compression(compression)  # a name no writer knows: refused before a file is touched
    for name in (partial, sidecar):
        if name.is_symlink():
            log.warning("%s is a symbolic link, which no job makes: removed, starting over", name)
            name.unlink()
    if resume and partial.exists() and sidecar.exists():
        if (found := _resumable(partial, sidecar, fp, compression)) is not None:
            log.info("resuming %s at frame %d of %d", partial, found[1], fp["shape"][0])
            return found
    elif partial.exists():
        log.info("%s exists%s: starting over", partial, "" if resume else " (--no-resume)")
    f = None
    try:
        partial.unlink(missing_ok=True)  # starting over
        f = h5py.File(partial, "x", libver=WRITE_LIBVER)
        create_output(f, tuple(fp["shape"]), attrs, compression=check_compression(compression))
        for name, values in (index or {}).items():
            _index_attrs(f.create_dataset(name, data=values))
        f.swmr_mode = True  # metadata written in dependency order: a killed client leaves a consistent file
        f.flush()
        write_state(sidecar, {"fingerprint": fp, "frames_done": 0})
    except (OSError, RuntimeError) as e:
        if f is not None:
            let_go_h5(f)
        output = partial.with_name(partial.name.removesuffix(".partial"))
        raise write_error(output, partial, 0, int(fp["shape"][0]), e) from None
    except BaseException:  # not a write that failed (an attribute h5py refused, a signal): no frame yet,
        if f is not None:  # nothing to resume, so nothing is left behind (a stray partial was)
            let_go_h5(f)
        partial.unlink(missing_ok=True)
        raise
    return f, 0
