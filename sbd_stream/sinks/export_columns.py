"""`sbd-stream export REC --kind columns --to csv`: every recorded atomic column as one CSV line.

Why: since session 31 each ``llr`` row keeps the frame's detected-column table and flags
(formats/column_table.py), but reading them took h5py code; a facility engineer or a researcher wants
them in a spreadsheet or ``pandas.read_csv``. One line per detected column, in recorded row order
(parts in order, rows in order: what ``recorded_columns`` yields; ``segment``, ``seq`` give frame order),
under a header line (``FIELDS``). A frame with no column (none found, or a blank frame) has no line: the
export's JSON summary counts the frames read, those without columns and the blank ones, so every frame
is accounted for. A row of a part written before the table existed has no table to write: counted
apart (``frames_without_table``); a recording none of whose rows has one is refused, nothing written.

CSV only: a table of mixed per-frame and per-column values fits no image format (TIFF, MRC, NPY), and
Parquet would need a dependency. Written as the frame exports are (sinks/export.py): the default name
``<recording>_columns.csv``, an existing output replaced only with ``--overwrite``, a hidden temporary
file renamed into place once complete.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np

from sbd_stream.formats.column_table import TABLE, ColumnRow, read_rows
from sbd_stream.formats.hdf5_read import h5_reason, open_recording
from sbd_stream.formats.limits import RecordingError, trusted_rows
from sbd_stream.formats.recording_parts import recording_parts
from sbd_stream.sinks.export import ExportError, _written, output_path, target
from sbd_stream.stop_pending import check_stop

KIND = "columns"
TO = "csv"
FIELDS = (
    "acq", "part", "part_row", "segment", "seq", "ts", "row", "col", "llr", "region_mean",
    "n_columns", "vacuum_counts", "evidence_frames", "blank", "vacuum_not_flat", "contrast",
)  # fmt: skip
"""The CSV header. ``part_row``: the frame's row in its part; ``row`` / ``col``: the column's centre in
detector pixels; ``region_mean``: counts per detector pixel; ``contrast``: ``region_mean /
vacuum_counts - 1`` (empty where no level is stated or it is 0); an empty cell: not recorded."""


def check_target(to: str) -> None:
    """The column table is written as CSV only; anything else is one line naming what works."""
    if to != TO:
        raise ExportError(
            f"--kind columns writes --to csv only (got {to}); tiff, mrc and npy are for frames "
            "(--kind raw, denoised or llr)"
        )


PartInfo = tuple[Path, str, int, int, bool]
"""(part, acq, segment, complete llr rows, has a table)."""


def _part_info(path: Path) -> list[PartInfo]:
    """(part, acq, segment, complete llr rows, has a table) of each part; no table read. A part of
    another file kind (a ``denoise`` output, no ``llr``) counts 0 rows."""
    info = []
    for part in recording_parts(path):
        with open_recording(part) as f:
            g = f.get("llr")
            ok = isinstance(g, h5py.Group) and all(name in g for name in ("frames", "complete", "seq", "ts"))
            n = trusted_rows(g, f"{part}: llr") if ok else 0
            acq = f.attrs.get("acq", "")
            acq = acq.decode(errors="replace") if isinstance(acq, bytes) else str(acq)
            table = ok and TABLE in g and "n_columns" in g
            info.append((part, acq, int(f.attrs.get("segment", 0)), n, table))
    return info


def _rows(parts: list[PartInfo]) -> Iterator[tuple[str, int, ColumnRow]]:
    """(acq, segment, row) of every complete ``llr`` row, parts in order (``recorded_columns``'s walk).
    A read that fails is one ExportError naming the part: caught in ``_written`` as an OSError, it would
    read as a failed write."""
    for part, acq, segment, n, _ in parts:
        if n:
            try:
                with open_recording(part) as f:
                    rows = list(read_rows(part, f["llr"]))
            except RecordingError as e:
                raise ExportError(str(e)) from None
            except (OSError, RuntimeError, KeyError) as e:
                raise ExportError(_unreadable(part, e)) from None
            for r in rows:
                yield acq, segment, r


def _unreadable(part: Path, e: BaseException) -> str:
    why = h5_reason(e)
    return f"{part}: cannot read its llr rows ({why})" + ("" if "damaged" in why else "; damaged?")


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def _write(fh: TextIO, parts: list[PartInfo], counts: dict[str, int]) -> None:
    """The header, then one line per column; ``counts`` filled as the rows go by."""
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(FIELDS)
    for acq, segment, r in _rows(parts):
        check_stop()  # a stop whose raise Python swallowed: no output, as for any stop (export.py)
        counts["frames"] += 1
        counts["blank_frames"] += bool(r.blank)
        if r.table is None:
            counts["frames_without_table"] += 1
            continue
        if len(r.table) == 0:
            counts["frames_without_columns"] += 1
            continue
        counts["columns"] += len(r.table)
        vac = r.vacuum_counts
        flags = [_cell(None if v is None else int(v)) for v in (r.blank, r.vacuum_not_flat)]
        frame = [acq, r.part.name, r.row, segment, r.seq, repr(r.ts)]
        after = [r.n_columns, _cell(None if vac is None else repr(vac)), _cell(r.evidence_frames), *flags]
        contrast = (
            r.table[:, 3].astype(np.float64) / vac - 1 if vac is not None and vac != 0 and math.isfinite(vac)
            else None
        )  # fmt: skip
        for i, values in enumerate(r.table):
            c = "" if contrast is None else repr(float(contrast[i]))
            w.writerow([*frame, *(str(v) for v in values), *after, c])  # str(float32): shortest exact


def export_columns(path: Path, to: str, out: Path | None, overwrite: bool) -> dict[str, Any]:
    """Write every recorded column of ``path`` as CSV; returns the summary (output, counts)."""
    check_target(target(to))
    try:
        parts = _part_info(path)
    except RecordingError as e:
        raise ExportError(str(e)) from None
    except (OSError, RuntimeError, KeyError) as e:
        raise ExportError(_unreadable(path, e)) from None
    if not any(n for *_, n, _ in parts):
        raise ExportError(
            f"{path}: no complete llr rows (recorded with likelihood off, or no recording?); no column table"
        )
    if not any(n and table for *_, n, table in parts):
        raise ExportError(
            f"{path}: recorded before the column table existed (no llr/columns, session 31); "
            "nothing to export"
        )
    out = output_path(path, TO, KIND, out, overwrite)
    names = ("frames", "frames_without_columns", "blank_frames", "frames_without_table", "columns")
    counts = dict.fromkeys(names, 0)
    with _written(out, overwrite, 0) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        _write(fh, parts, counts)
        check_stop()  # one swallowed during the last row: not renamed into place
    return {"output": str(out), "kind": KIND, **counts, "parts": len(parts)}
