"""Reading a recording's parts as a whole: their frames' shape and dtype, the sampling they state, rows.

Moved out of ``formats/recording.py`` (the writer's file, at the module size limit) unchanged; that
module re-exports every name, so readers import them from either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from sbd_stream.formats.hdf5_read import ForeignFilter, h5_reason, open_read, open_recording
from sbd_stream.formats.limits import RecordingError, check_dtype, sampling_attrs, trusted_rows
from sbd_stream.formats.recording_parts import recording_parts
from sbd_stream.formats.safe_chunks import safe_dataset

log = logging.getLogger("sbd_stream.formats.recording")  # the name its lines always had


SAMPLING_ATTRS = ("pixel_size_A", "dose_e_per_A2", "counts_per_px")
"""The attributes that state a stack's or a recording's detector sampling."""


def frames_key(path: Path, kind: str = "raw") -> tuple[tuple[int, ...], str] | None:
    """(frame shape, dtype) of ``kind`` in one part, None where it has no such frames.

    ``RecordingError`` naming the part where ``kind`` cannot be followed (a soft-link loop, ``/entry``
    a dataset) or its frames hold no counts (complex, bool, strings: ``check_dtype``), so every reader
    that stacks a recording refuses them in one line instead of a traceback or a silent cast."""
    with open_recording(path) as f:
        try:
            g = f.get(kind)
            ds = g.get("frames") if isinstance(g, h5py.Group) else g
        except (KeyError, RuntimeError, OSError) as e:
            why = h5_reason(e)
            raise RecordingError(f"{path}: {kind} frames cannot be opened ({why}); damaged?") from None
        if ds is None:
            return None
        if not isinstance(ds, h5py.Dataset):
            raise RecordingError(f"{path}: {kind} frames are no dataset (not a recording made by `serve`?)")
        try:
            check_dtype(ds.dtype)
        except ValueError as e:
            raise RecordingError(f"{path}: {kind} frames: {e}") from None
        return tuple(int(x) for x in ds.shape[1:]), str(ds.dtype)


def uniform_parts(path: Path, kind: str = "raw") -> list[Path]:
    """The consecutive parts from ``path`` on whose ``kind`` frames share its shape and dtype.

    Readers that stack a recording (``export``, ``denoise`` / ``replay --offline``) stop before the
    first part that differs instead of refusing the whole recording, and say in one log line where
    they stopped and which file to give next: that part, read the same way, goes on from there.
    """
    parts = recording_parts(path)
    first = None
    for k, part in enumerate(parts):
        key = frames_key(part, kind)
        if key is None:
            continue
        if first is None:
            first = key
        elif key != first:
            log.warning(
                "%s: %s holds %s frames %s %s after %s %s; read %d part(s), stopping there "
                "(give %s to read on from it)",
                path, part.name, kind, key[0], key[1], first[0], first[1], k, part,
            )  # fmt: skip
            return parts[:k]
    return parts


def is_recording(path: Path) -> bool:
    """Whether ``path`` is a recording made by ``serve`` (raw frames with their ``complete`` column)."""
    try:
        with open_recording(Path(path)) as f:
            return "raw/frames" in f and "raw/complete" in f
    except ForeignFilter:  # a recording all the same: its reader refuses it in one line, no plain stack
        with open_read(Path(path)) as f:
            return "raw/frames" in f and "raw/complete" in f
    except (OSError, ValueError, RuntimeError, KeyError):  # unreadable: the stack reader says why
        return False


def recorded_detector(path: Path) -> dict[str, float]:
    """The detector sampling a recording (or any HDF5 stack) states in its attributes, if any.

    Recordings written by the service carry ``pixel_size_A`` and the dose both per area and per
    pixel; only one dose form is returned (per area wins), as the settings take one.
    A stated value that is no finite number > 0 is a ``RecordingError`` naming file and attribute.
    """
    try:
        with open_recording(Path(path)) as f:
            stated = {k: f.attrs[k] for k in SAMPLING_ATTRS if k in f.attrs}
    except (OSError, ValueError, TypeError):
        return {}
    try:
        attrs = sampling_attrs(stated, str(path))
    except ValueError as e:
        raise RecordingError(str(e)) from None
    if "dose_e_per_A2" in attrs:
        attrs.pop("counts_per_px", None)
    return attrs


def iter_recorded(path: Path, kind: str = "raw") -> Iterator[tuple[str, int, float, np.ndarray]]:
    """(acq, seq, ts, frame) for every complete frame of ``kind`` across the rolled files."""
    for part in recording_parts(path):
        with open_recording(part) as f:
            if kind not in f:
                continue
            acq = str(f.attrs.get("acq", part.stem))
            g = f[kind]
            n = trusted_rows(g, f"{part}: {kind}")  # the rows written, whatever the extents declare
            seqs, tss = g["seq"][:n], g["ts"][:n]
            frames = safe_dataset(g["frames"])  # bitshuffle-LZ4 by default: never through the filter
            for i in range(n):
                yield acq, int(seqs[i]), float(tss[i]), frames[i]
