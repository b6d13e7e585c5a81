"""The column table of an ``llr`` message (docs/wire-format.md): what a downstream client gets per
detected column, kept apart from the wire's header rules in ``protocol``."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_HEADER_COLUMNS = 1000
"""Columns beyond this are not listed in an ``llr`` header (they would pass the 64 kB header limit)."""
COLUMN_FIELDS = ("row", "col", "llr", "region_mean")


def llr_columns(
    table: np.ndarray, evidence_frames: int = 0, vacuum_counts: float | None = None
) -> tuple[dict[str, Any], list[list[float]]]:
    """An ``llr`` message's column table: (meta, rows: row, col and llr rounded to 3 decimals,
    region_mean to 6; at most MAX_HEADER_COLUMNS).

    ``table`` is (K, 4) [row, col, llr, region_mean]; ``meta`` says how many columns there were in all,
    how many other frames' counts scored them (``evidence_frames``; 0: the frame's own counts) and the
    vacuum level they were scored against (``vacuum_counts``, counts per detector pixel per frame, the
    unit of ``region_mean``): a column's contrast is ``region_mean / vacuum_counts - 1``, which a
    client could not tell before without estimating the vacuum again from the raw frame. That contrast
    is over the region scored (0.7 A on a frame's own counts, 1.25 A with the evidence defaults), so
    rows with and without evidence frames differ in it (docs/likelihood.md, "Parameters and pixel size").
    """
    meta: dict[str, Any] = {
        "n_columns": len(table),
        "columns_fields": list(COLUMN_FIELDS),
        "evidence_frames": int(evidence_frames),
    }
    if vacuum_counts is not None and np.isfinite(vacuum_counts) and vacuum_counts > 0:  # 0: too small
        meta["vacuum_counts"] = round(float(vacuum_counts), 6)
    rows = np.asarray(table[:MAX_HEADER_COLUMNS], np.float64).reshape(-1, len(COLUMN_FIELDS))
    rounded = np.round(rows, 3)
    # region_mean to 6, as vacuum_counts: ~0.45 counts per detector pixel kept 3 significant digits, so
    # a contrast region_mean / vacuum_counts - 1 of a 7 % column was coarse to +-1.6 % (audit h36)
    rounded[:, 3] = np.round(rows[:, 3], 6)
    return meta, rounded.tolist()
