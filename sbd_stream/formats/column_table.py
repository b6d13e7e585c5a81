"""The detected-column table and frame flags of a recording's rows: their layout, and reading them back.

Why: the published ``llr`` header carries each frame's atomic column table (``columns``, ``meta.n_columns``,
``meta.vacuum_counts``) and the frame flags (``meta.blank``, ``meta.vacuum_not_flat``), but recordings
held only the maps. A facility engineer replaying a recording, or a researcher opening it in h5py, could
not see the columns the live subscribers were told of, nor which frames had no beam: "how far each
detected atom can be trusted" was lost with the subscriber's copy. Layout (docs/service.md, Recording
format), in the ``llr`` NXdata group beside ``evidence_frames``:

* ``columns``: (M, 4) float32, every row's table appended one after another (``fields`` attribute: row,
  col, llr, region_mean; row / col in detector pixels, region_mean in counts per detector pixel). ALL
  the columns the stage found, not only the wire header's first 1000, at the stage's float32 precision
  (the header rounds row, col and llr to 3 decimals, region_mean to 6: ``llr_table.llr_columns``).
* ``columns_start`` / ``n_columns``: (N,) int64 per row: row ``i``'s table is
  ``columns[columns_start[i] : columns_start[i] + n_columns[i]]`` (-1: no table given for that row).
* ``vacuum_counts``: (N,) float64, the level the columns were scored against (NaN: none stated).
* ``blank`` / ``vacuum_not_flat``: (N,) int8, 1 where the frame's outputs carried the flag, 0 where not
  (-1: not said); the ``denoised`` group has them too, so they are kept when likelihood is off.

A row's table and per-row values are written before its ``complete`` (``AcqFile.append``), so a crash
mid-row leaves a table no counted row points at, and a reopened part overwrites it: the complete rows'
tables stay contiguous (``columns_start[i + 1] == columns_start[i] + n_columns[i]``).
"""

from __future__ import annotations

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
from sbd_stream.llr_table import COLUMN_FIELDS, llr_columns

TABLE = "columns"
TABLE_CHUNK = 1024
"""Table rows per HDF5 chunk (16 KiB): a frame's few hundred columns per append, few chunks per part."""
FLAGS = ("blank", "vacuum_not_flat")
"""The frame flags of the published ``denoised`` / ``llr`` meta that are recorded per row."""
NOT_SAID = -1
MAX_ROW_COLUMNS = 10**6
"""More columns than this in one row is a damaged or crafted part (a 4096^2 frame at 0.06 A holds ~15000
columns 2 A apart): refused before its table is read, as ``limits`` refuses rows a file cannot hold."""


def add_table(g: h5py.Group) -> None:
    """The empty, growing ``columns`` table of an ``llr`` group (laid out by ``nexus.add_data``)."""
    ds = g.create_dataset(
        TABLE, shape=(0, len(COLUMN_FIELDS)), maxshape=(None, len(COLUMN_FIELDS)),
        chunks=(TABLE_CHUNK, len(COLUMN_FIELDS)), dtype=np.float32,
    )  # fmt: skip
    ds.attrs["fields"] = np.array(COLUMN_FIELDS, dtype=h5py.string_dtype())
    ds.attrs["long_name"] = "detected columns of every row: row, col (detector px), llr, region_mean (counts)"
    ds.attrs["row_index"] = "columns_start, n_columns"


def table_end(g: h5py.Group, n: int) -> int:
    """Where the next row's table goes in a part whose first ``n`` rows are complete: after the last
    complete row's table, so the rows of one cut short by a crash are written over."""
    if n <= 0 or "columns_start" not in g or "n_columns" not in g:
        return 0
    start, k = np.asarray(g["columns_start"][:n]), np.asarray(g["n_columns"][:n])
    given = (start >= 0) & (k >= 0)  # rows written without a table (-1) point nowhere
    return int((start[given] + k[given]).max()) if given.any() else 0


def write_table(out: Appended, start: int, table: np.ndarray) -> int:
    """Write ``table`` ((k, 4), any float) at ``start`` of the ``columns`` dataset (``out``); returns k."""
    rows = np.ascontiguousarray(np.asarray(table, np.float32).reshape(-1, len(COLUMN_FIELDS)))
    return out.write(start, rows)  # one HDF5 write, the extent tracked (formats/row_writes.py)


def row_meta(
    kind: str, header_meta: dict[str, Any], columns: np.ndarray | None, vacuum_counts: float | None
) -> dict[str, Any]:
    """What the recorder keeps of a denoised / llr frame beside its data (``RecordItem.meta``): the
    flags its published meta carries (1 / 0), and for llr the level and its own copy of the table (the
    batch's host buffer it views may be reused before the writer gets to it)."""
    if kind not in ("denoised", "llr"):
        return {}
    meta: dict[str, Any] = {name: 1 if header_meta.get(name) else 0 for name in FLAGS}
    if kind == "llr":
        meta["vacuum_counts"] = math.nan if vacuum_counts is None else float(vacuum_counts)
        meta["table"] = None if columns is None else np.array(columns, np.float32)
    return meta


def row_values(kind: str, meta: dict[str, Any], evidence_frames: int) -> tuple[np.ndarray | None, dict]:
    """(table, per-row values) for ``AcqFile.append`` from a queued item's ``row_meta`` (an API caller's
    item without them: None and {}, so the datasets' fill values are written)."""
    own = {name: meta[name] for name in (*FLAGS, "vacuum_counts") if name in meta and kind != "raw"}
    if kind != "llr":
        return None, own
    return meta.get("table"), {**own, "evidence_frames": evidence_frames}


@dataclass
class ColumnRow:
    """One recorded ``llr`` row: its frame, column table and flags, as the live ``llr`` header had them."""

    part: Path
    row: int
    seq: int
    ts: float
    table: np.ndarray | None  # (n_columns, 4) float32 [row, col, llr, region_mean]; None: not recorded
    n_columns: int | None
    vacuum_counts: float | None
    evidence_frames: int | None
    blank: bool | None
    vacuum_not_flat: bool | None

    def published(self) -> tuple[dict[str, Any], list[list[float]]]:
        """(meta, columns) as the service published them in this frame's ``llr`` header (its own keys;
        the producer's meta is its raw row's, ``frame_meta``): ``llr_table.llr_columns`` on the recorded
        table, and the flags where set. RecordingError when the part holds no table for this row (an older
        part)."""
        if self.table is None:
            raise RecordingError(f"{self.part}: llr row {self.row} has no recorded column table")
        meta, columns = llr_columns(self.table, self.evidence_frames or 0, self.vacuum_counts)
        meta.update({name: True for name in FLAGS if getattr(self, name)})
        return meta, columns


def _said(values: np.ndarray | None, i: int) -> int | None:
    v = None if values is None else int(values[i])
    return None if v is None or v == NOT_SAID else v


ROW_VALUES = ("n_columns", "columns_start", "evidence_frames", "vacuum_counts", *FLAGS)


def read_rows(path: Path, g: h5py.Group) -> Iterator[ColumnRow]:
    """The complete rows of one part's open ``llr`` group (``g``); parts written before the table have
    ``table`` None (and None for each value they lack)."""
    n = trusted_rows(g, f"{path}: llr")
    got = {name: g.get(name) for name in ROW_VALUES}
    n = min([n] + [int(ds.shape[0]) for ds in got.values() if ds is not None])
    cols = {name: None if ds is None else np.asarray(ds[:n]) for name, ds in got.items()}
    table = g.get(TABLE)
    seqs, tss = g["seq"][:n], g["ts"][:n]
    for i in range(n):
        k, start = _said(cols["n_columns"], i), _said(cols["columns_start"], i)
        rows = None
        if table is not None and k is not None and start is not None:
            if start < 0 or k > MAX_ROW_COLUMNS or start + k > table.shape[0]:
                raise RecordingError(f"{path}: llr row {i}: its columns lie outside llr/columns (damaged?)")
            rows = np.asarray(table[start : start + k], np.float32)
        vac = None if cols["vacuum_counts"] is None else float(cols["vacuum_counts"][i])
        flags = {name: None if (v := _said(cols[name], i)) is None else bool(v) for name in FLAGS}
        yield ColumnRow(
            path, i, int(seqs[i]), float(tss[i]), rows, k,
            None if vac is None or math.isnan(vac) else vac, _said(cols["evidence_frames"], i), **flags,
        )  # fmt: skip


def recorded_columns(path: str | Path) -> Iterator[ColumnRow]:
    """Every complete ``llr`` row of a recording, across its rolled parts in order: the column table and
    flags its frame was published with. A part without ``llr`` (likelihood off) is passed over.

    Recipe (docs/service.md)::

        from sbd_stream.formats.column_table import recorded_columns
        for r in recorded_columns("run1/acq.nxs"):
            print(r.seq, r.n_columns, r.blank, r.table[:3])  # r.table: (n, 4) row, col, llr, region_mean
    """
    for part in recording_parts(Path(path)):
        with open_recording(part) as f:
            if "llr" in f:
                yield from read_rows(part, f["llr"])
