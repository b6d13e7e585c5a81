"""Each raw row's producer ``meta`` and ``exposure_s``: their layout in a recording, and reading them back.

Why: a frame header's free ``meta`` is where a producer states what its instruments said about that
frame (in-situ: stage temperature, gas pressure, tilt, beam current; DECTRIS: the detector's series,
frame number, times and hash), and ``exposure_s`` its exposure. Recordings held neither, so a replay
sent empty ``meta`` and the series' exposure, and a researcher could not join a frame to its conditions.
Layout (docs/service.md, Recording format), in the ``raw`` NXdata group beside ``seq`` / ``ts``:

* ``exposure_s``: (N,) float64, the frame header's ``exposure_s`` (NaN: not given, an API caller's item).
* ``meta``: (M,) uint8, every row's ``meta`` as compact ASCII JSON, appended one after another. Bytes,
  not a variable-length string dataset: HDF5 cannot filter those (``h5repack -f GZIP=1`` compresses this
  one), and one append is one hyperslab write. Left unfiltered as written, as ``llr/columns``: a chunk
  rewritten compressed at every per-frame flush leaves its old copies as dead file space.
* ``meta_start`` / ``meta_length``: (N,) int64: row ``i``'s meta is
  ``json.loads(meta[meta_start[i] : meta_start[i] + meta_length[i]])``; length 0 is an empty ``{}``
  (no byte written: an empty meta costs two int64), -1 not recorded.

What is recorded is the ``meta`` as the service received it, after the input renamed a producer's key
clashing with the service's own (``meta.<key>``, ``frames.own_keys_renamed``), and before the edge added
its own keys (``nonfinite_pixels``, ``hot_pixels``...): those describe what the denoiser was given, they
belong to the outputs' headers, and a replay's edge finds them again in the recorded raw frame.

Rows are written before their ``complete`` (``AcqFile.append``), so a crash mid-row leaves bytes no
counted row points at, and a reopened part writes over them (as ``column_table``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sbd_stream.formats.hdf5_read import open_recording
from sbd_stream.formats.limits import RecordingError, trusted_rows
from sbd_stream.formats.recording_parts import recording_parts
from sbd_stream.formats.row_writes import Appended

BYTES = "meta"
CHUNK = 16384
"""Bytes per HDF5 chunk: ~80 rows of a ~200 B meta, four chunks for one near the 64 KiB header limit."""
MAX_ROW_BYTES = 1 << 20
"""A row's meta larger than this is a damaged or crafted part (the wire's header is at most 64 KiB):
refused before it is read. The writer stores a ``meta_dropped`` note instead of a larger one (an API
caller's item; nothing received over the wire comes near)."""
SPAN_BYTES = 1 << 24
"""A block's rows are read in one slice when their bytes lie within this (always, as written); rows
scattered further apart (a crafted part) are read one by one, never a gigabyte between them."""
META_ROWS = 4096
"""Rows whose meta is read at once: ~1 MiB of a ~200 B meta."""
COLUMNS = (("exposure_s", np.float64, math.nan), ("meta_start", np.int64, -1), ("meta_length", np.int64, -1))
"""The raw group's per-row datasets (``nexus.KIND_COLUMNS``): name, dtype, value when not given."""
LONG_NAMES = {
    "exposure_s": "the frame header's exposure_s (s; NaN: not given)",
    "meta_start": "the row's first byte in meta",
    "meta_length": "bytes of the row's meta JSON (0: empty meta; -1: not recorded)",
}


def add_bytes(g: h5py.Group) -> None:
    """The empty, growing ``meta`` byte dataset of a ``raw`` group (laid out by ``nexus.add_data``)."""
    ds = g.create_dataset(BYTES, shape=(0,), maxshape=(None,), chunks=(CHUNK,), dtype=np.uint8)
    ds.attrs["long_name"] = "each frame's producer meta, compact ASCII JSON, one row after another"
    ds.attrs["content_type"] = "application/json"
    ds.attrs["row_index"] = "meta_start, meta_length"
    g["exposure_s"].attrs["units"] = "s"


def encode(meta: dict[str, Any] | None) -> bytes:
    """``meta`` as the compact JSON a row stores (b"" for an empty one)."""
    if not meta:
        return b""
    # ASCII: a lone surrogate the wire's JSON admits ("\\ud800") stays an escape, never a UnicodeEncodeError
    blob = json.dumps(meta, separators=(",", ":"), default=str).encode()
    if len(blob) > MAX_ROW_BYTES:
        return json.dumps({"meta_dropped": f"{len(blob)} bytes > {MAX_ROW_BYTES}"}).encode()
    return blob


def bytes_end(g: h5py.Group, n: int) -> int:
    """Where the next row's meta goes in a part whose first ``n`` raw rows are complete (after the last
    complete row's bytes: those of a row cut short by a crash are written over)."""
    if n <= 0 or "meta_start" not in g or "meta_length" not in g:
        return 0
    start, k = np.asarray(g["meta_start"][:n]), np.asarray(g["meta_length"][:n])
    given = (start >= 0) & (k >= 0)
    return int((start[given] + k[given]).max()) if given.any() else 0


def write_row(out: Appended, start: int, meta: dict[str, Any] | None) -> dict[str, int]:
    """Write ``meta``'s JSON at ``start`` of the ``meta`` dataset (``out``); its ``meta_start`` /
    ``meta_length``."""
    blob = encode(meta)
    k = out.write(start, np.frombuffer(blob, np.uint8)) if blob else 0  # one HDF5 write (row_writes.py)
    return {"meta_start": start, "meta_length": k}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON number")


def decode(blob: bytes, where: str) -> dict[str, Any]:
    """A row's stored JSON as a dict; RecordingError naming ``where`` when it is none (damaged)."""
    try:
        out = json.loads(blob.decode(), parse_constant=_no_constant) if blob else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordingError(f"{where}: its meta is no JSON object (damaged?): {e}") from None
    if not isinstance(out, dict):
        raise RecordingError(f"{where}: its meta is no JSON object (damaged?)")
    return out


def block(g: h5py.Group, a: int, b: int, where: str) -> list[tuple[float | None, dict[str, Any] | None]]:
    """(exposure_s, meta) of raw rows ``a`` to ``b`` of an open part, one read per dataset; None where
    the part holds none (an older part, or not given)."""
    n = b - a
    exp = g.get("exposure_s")
    starts, lengths, data = g.get("meta_start"), g.get("meta_length"), g.get(BYTES)
    exposures = [None] * n if exp is None or exp.shape[0] < b else [_finite(v) for v in exp[a:b]]
    if starts is None or lengths is None or data is None or min(starts.shape[0], lengths.shape[0]) < b:
        return [(e, None) for e in exposures]
    st, ln = np.asarray(starts[a:b], np.int64), np.asarray(lengths[a:b], np.int64)
    given = (st >= 0) & (ln >= 0)
    bad = given & ((ln > MAX_ROW_BYTES) | (st + ln > data.shape[0]))
    if bad.any():
        raise RecordingError(f"{where} row {a + int(np.argmax(bad))}: its meta lies outside raw/meta")
    lo = int(st[given].min()) if given.any() else 0
    hi = int((st + ln)[given].max()) if given.any() else 0
    span = bytes(np.asarray(data[lo:hi], np.uint8)) if hi - lo <= SPAN_BYTES else None  # one read
    out = []
    for i in range(n):
        meta = None
        if given[i]:
            s, k = int(st[i]), int(ln[i])
            blob = span[s - lo : s - lo + k] if span is not None else bytes(np.asarray(data[s : s + k]))
            meta = decode(blob, f"{where} row {a + i}")
        out.append((exposures[i], meta))
    return out


def rows(g: h5py.Group, n: int, where: str) -> Iterator[tuple[float | None, dict[str, Any] | None]]:
    """(exposure_s, meta) of raw rows 0 to ``n`` of an open part, read ``META_ROWS`` at a time."""
    for a in range(0, n, META_ROWS):
        yield from block(g, a, min(n, a + META_ROWS), where)


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class FrameMeta:
    """One recorded raw row: its frame's ``exposure_s`` and ``meta`` as the producer sent them."""

    part: Path
    row: int
    seq: int
    ts: float
    exposure_s: float | None  # None: not recorded (an older part) or not given
    meta: dict[str, Any] | None  # None: not recorded (an older part); {}: the frame came with none


def recorded_meta(path: str | Path) -> Iterator[FrameMeta]:
    """Every complete raw row of a recording, across its rolled parts in order, with its ``exposure_s``
    and ``meta``. Parts written before them give None for both.

    Recipe (docs/service.md)::

        from sbd_stream.formats.frame_meta import recorded_meta
        for r in recorded_meta("run1/acq.nxs"):
            print(r.seq, r.exposure_s, r.meta.get("stage_temperature_K"))
    """
    for part in recording_parts(Path(path)):
        with open_recording(part) as f:
            if "raw" not in f:
                continue
            g = f["raw"]
            n = trusted_rows(g, f"{part}: raw")
            seqs, tss = g["seq"][:n], g["ts"][:n]
            for i, (exposure, meta) in enumerate(rows(g, n, f"{part}: raw")):
                yield FrameMeta(part, i, int(seqs[i]), float(tss[i]), exposure, meta)
