"""The NeXus side of a recording: what makes HyperSpy, silx, nexpy and DAWN open it with calibrated axes.

Every dataset of a recording lives in one ``NXentry`` (``/entry``); the frames of each kind are an
``NXdata`` group (``/entry/raw``, ``/entry/denoised``, ``/entry/llr``) whose signal is ``frames`` and
whose axes are ``frame`` (the row), ``y`` and ``x`` (A, from the detector pixel size), with ``time``
(s since the acquisition's first frame) as an auxiliary axis. The top-level ``/raw``, ``/denoised``,
``/llr`` of format ``sbd-recording/1`` are soft links to them, so every reader of the first layout
goes on working. Everything here is created outside SWMR mode (SWMR can neither add objects nor
attributes): the entry and ``raw`` with the file, a ``denoised`` / ``llr`` group by the writer when
its first frame arrives (formats/recording.py). Layout tree: docs/service.md (Recording format).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import h5py
import numpy as np

from sbd_stream import __version__
from sbd_stream.formats import column_table, frame_meta

ENTRY = "entry"
LONG_NAMES = {
    "raw": "counts",
    "denoised": "denoised counts",
    "llr": "log likelihood ratio",
}
EXPOSURE_KEYS = ("count_time", "exposure_s", "exposure")  # NXdetector/count_time, s
FRAME_TIME_KEYS = ("frame_time", "frame_time_s")  # NXdetector/frame_time, s


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 with time zone (NeXus NX_DATE_TIME).

    Raises OverflowError / ValueError outside years 1-9999; the edge refuses such ``ts``
    (``protocol.TS_MIN``), and the writer creates a part atomically, so none is left half made.
    """
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _text(g: h5py.Group, name: str, value: str, **attrs: Any) -> None:
    ds = g.create_dataset(name, data=value, dtype=h5py.string_dtype())
    for k, v in attrs.items():
        ds.attrs[k] = v


def _number(g: h5py.Group, name: str, value: float, units: str) -> None:
    g.create_dataset(name, data=float(value)).attrs["units"] = units


def _find(meta: Any, keys: tuple[str, ...]) -> Any:
    """The first of ``keys`` in a (nested) series metadata dict, or None."""
    if isinstance(meta, dict):
        for k in keys:
            if k in meta and meta[k] is not None:
                return meta[k]
        for v in meta.values():
            found = _find(v, keys)
            if found is not None:
                return found
    return None


def _loads(text: Any) -> dict:
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _axes(g: h5py.Group, shape: tuple[int, int], pixel_A: float | None) -> None:
    """``y`` and ``x`` pixel-centre coordinates in A (pixel indices when the pixel size is unknown)."""
    for name, n in (("y", shape[0]), ("x", shape[1])):
        if pixel_A:
            ds = g.create_dataset(name, data=np.arange(n, dtype=np.float64) * float(pixel_A))
            ds.attrs["units"] = "angstrom"
        else:
            ds = g.create_dataset(name, data=np.arange(n, dtype=np.float64))
            ds.attrs["units"] = "pixel"
        ds.attrs["long_name"] = f"{name} ({ds.attrs['units']})"


def create_entry(f: h5py.File, attrs: dict[str, Any]) -> h5py.Group:
    """``/entry`` with its instrument and process groups; the NXdata groups come with :func:`add_data`.

    ``entry/@default`` names ``raw`` until a denoised group is added (a default naming a group
    that is not there makes readers give up on the default).
    """
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = ENTRY
    f.attrs["creator"] = f"sbd-stream {__version__}"
    t0 = float(attrs.get("t0", attrs.get("created", 0.0)))
    series = _loads(attrs.get("series_meta"))
    run = _loads(attrs.get("run_config"))
    dialect = series.get("dialect") or run.get("ingest", {}).get("input", {}).get("dialect") or "unknown"
    # a DECTRIS ts is the detector's own clock (seconds from the series' start), not a date: the first
    # frame's ts dated every DECTRIS recording 1970-01-01. Its part states when it was created instead.
    start = float(attrs.get("created", t0)) if str(dialect).startswith("dectris") else t0
    entry = f.create_group(ENTRY)
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "raw"
    _text(entry, "title", str(attrs.get("acq", "")))
    _text(entry, "start_time", iso(start))
    _text(entry, "program_name", "sbd-stream", version=__version__)

    inst = entry.create_group("instrument")
    inst.attrs["NX_class"] = "NXinstrument"
    det = inst.create_group("detector")
    det.attrs["NX_class"] = "NXdetector"
    _text(det, "description", str(dialect))
    pixel = attrs.get("pixel_size_A")
    if pixel:
        _number(det, "x_pixel_size", pixel, "angstrom")
        _number(det, "y_pixel_size", pixel, "angstrom")
    if attrs.get("dose_e_per_A2"):
        _number(det, "dose_per_frame", attrs["dose_e_per_A2"], "e/angstrom^2")
    if attrs.get("counts_per_px"):
        _number(det, "counts_per_pixel", attrs["counts_per_px"], "counts")
    for field, keys in (("count_time", EXPOSURE_KEYS), ("frame_time", FRAME_TIME_KEYS)):
        value = _find(series, keys)  # as the detector's series_start states them (DECTRIS: config)
        if isinstance(value, int | float) and not isinstance(value, bool):
            _number(det, field, value, "s")
    _text(det, "series_metadata", json.dumps(series, default=str), type="application/json")

    proc = entry.create_group("process")
    proc.attrs["NX_class"] = "NXprocess"
    _text(proc, "program", "sbd-stream")
    _text(proc, "version", __version__)
    _text(proc, "date", iso(float(attrs.get("created", t0))))
    for name in ("engine_card", "run_config"):
        note = proc.create_group(name)
        note.attrs["NX_class"] = "NXnote"
        _text(note, "type", "application/json")
        _text(note, "data", str(attrs.get(name, "{}")))
    if attrs.get("bin"):  # k, or the fractional resampling factor r where no integer bin serves
        b = float(attrs["bin"])
        proc.create_dataset("binning", data=int(b) if b.is_integer() else b)
    if attrs.get("working_pixel_A"):
        _number(proc, "working_pixel_size", attrs["working_pixel_A"], "angstrom")
    return entry


ROW_CHUNK = 512
"""Rows per chunk of every per-row dataset (4 KiB of int64): the flush after each row rewrites the chunk
holding it, and 4096-row chunks (32 KiB each, 8 to 11 datasets a row) made that flush ~1.6x as long
(benchmarks/bench_record_rows.py). Only the storage: readers see the same datasets."""
ROW_COLUMNS = (("frame", np.int64), ("time", np.float64), ("seq", np.int64), ("ts", np.float64))
"""Per-row datasets of each NXdata group, appended with every frame; ``complete`` comes last."""
_FLAG_COLUMNS = (("blank", np.int8, -1), ("vacuum_not_flat", np.int8, -1))
KIND_COLUMNS: dict[str, tuple[tuple[str, Any, float], ...]] = {
    "raw": frame_meta.COLUMNS,  # exposure_s, meta_start, meta_length (formats/frame_meta.py)
    "denoised": _FLAG_COLUMNS,
    "llr": (
        ("evidence_frames", np.int64, -1),
        ("n_columns", np.int64, -1),
        ("columns_start", np.int64, -1),
        ("vacuum_counts", np.float64, float("nan")),
        *_FLAG_COLUMNS,
    ),
}
"""Per-row datasets of one kind, (name, dtype, value when not given): ``llr/evidence_frames``, how many
other frames' counts scored the row's map (0: the frame's own; its LLR is a sum over them, so scales
differ ~N-fold); the column table's row index and vacuum level, and the frame flags the published
``denoised`` / ``llr`` meta carried (formats/column_table.py); each raw frame's ``exposure_s`` and the
row index of its producer ``meta`` (formats/frame_meta.py). Parts written before them lack them."""
KIND_LONG_NAMES = {
    "evidence_frames": "other frames whose counts scored the map (0: its own)",
    "n_columns": "detected columns of the row (-1: no table given)",
    "columns_start": "the row's first entry in columns",
    "vacuum_counts": "vacuum level the columns were scored against (counts per detector pixel)",
    "blank": "1: no beam, outputs all zeros (meta.blank)",
    "vacuum_not_flat": "1: the blocks taken as vacuum were not flat (meta.vacuum_not_flat)",
    **frame_meta.LONG_NAMES,
}


def add_data(
    f: h5py.File, kind: str, shape: tuple[int, int], dtype: Any, compression: dict[str, Any]
) -> h5py.Group:
    """The NXdata group ``/entry/<kind>`` with every dataset it will grow, and its ``/<kind>`` link.

    Axes: ``frame`` (the row in this part: uniform, so every reader calibrates it, with units),
    ``y`` and ``x`` in A. ``time`` (s since the acquisition's first frame) is an auxiliary axis of
    the same dimension: a detector's clock is never uniform to HyperSpy's 1e-5, and RosettaSciIO
    drops the units of an axis it finds irregular. Added when the first frame of ``kind`` arrives,
    so a part never holds an empty group (an empty axis breaks RosettaSciIO's full read).
    """
    entry = f[ENTRY]
    t0 = float(f.attrs.get("t0", 0.0))
    g = entry.create_group(kind)
    g.attrs["NX_class"] = "NXdata"
    g.attrs["signal"] = "frames"
    g.attrs["axes"] = np.array(["frame", "y", "x"], dtype=h5py.string_dtype())
    for i, ax in enumerate(("frame", "y", "x")):
        g.attrs[f"{ax}_indices"] = i
    g.attrs["time_indices"] = 0
    g.attrs["interpretation"] = "image"  # read on the group by RosettaSciIO, on the signal by silx
    _axes(g, shape, f.attrs.get("pixel_size_A"))
    fr = g.create_dataset(
        "frames", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=dtype, **compression
    )
    fr.attrs["interpretation"] = "image"
    fr.attrs["long_name"] = LONG_NAMES.get(kind, kind)
    if kind != "llr":
        fr.attrs["units"] = "counts"
    own = [(name, dt_) for name, dt_, _ in KIND_COLUMNS.get(kind, ())]
    for name, dt_ in (*ROW_COLUMNS, *own, ("complete", np.uint8)):
        g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(ROW_CHUNK,), dtype=dt_)
    g["frame"].attrs["units"] = "frame"
    g["frame"].attrs["long_name"] = "frame (row in this file; seq: the detector's frame number)"
    g["time"].attrs["units"] = "s"
    # the entry's start_time: a date for every dialect (a DECTRIS t0 is the detector's clock, 1970 as a date)
    g["time"].attrs["start"] = entry["start_time"][()].decode() if "start_time" in entry else iso(t0)
    g["time"].attrs["long_name"] = "time since the acquisition's first frame (s)"
    g["ts"].attrs["units"] = "s"
    for name, _, _ in KIND_COLUMNS.get(kind, ()):
        g[name].attrs["long_name"] = KIND_LONG_NAMES[name]
    if kind == "llr":
        g["vacuum_counts"].attrs["units"] = "counts"
        column_table.add_table(g)  # the detected columns of every row (formats/column_table.py)
    if kind == "raw":
        frame_meta.add_bytes(g)  # each frame's producer meta (formats/frame_meta.py)
    f[kind] = h5py.SoftLink(f"/{ENTRY}/{kind}")  # the top-level name of format sbd-recording/1
    if kind == "denoised":
        entry.attrs["default"] = "denoised"
    return g
