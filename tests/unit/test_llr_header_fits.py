"""The ``llr`` column table always fits the 64 kB header, however many columns a frame has.

llr_table.py: ``MAX_HEADER_COLUMNS`` -- "Columns beyond this are not listed in an ``llr`` header (they
would pass the 64 kB header limit)"; ``llr_columns`` returns "rows rounded to 3 decimals, at most
MAX_HEADER_COLUMNS". docs/wire-format.md: ``columns`` "at most 1000; ``meta.n_columns`` holds the true
count ... values are rounded to 3 decimals". Full float64 reprs of 1000 rows are ~75 kB, and 3000 rounded
rows ~96 kB: either way the frame's ``llr`` message could not be sent (``HeaderTooLarge``).
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.llr_table import MAX_HEADER_COLUMNS, llr_columns
from sbd_stream.protocol import MAX_HEADER_BYTES, TOPIC_LLR, decode, encode_frame


def _table(k: int, seed: int = 0) -> np.ndarray:
    """(k, 4) float32 [row, col, llr, region_mean]: positions over the largest wire frame, wide LLRs."""
    rng = np.random.default_rng(seed)
    cols = [
        rng.uniform(0, 16384, k),
        rng.uniform(0, 16384, k),
        rng.normal(0, 3000, k),
        rng.uniform(0, 300, k),
    ]
    return np.column_stack(cols).astype(np.float32)


@pytest.mark.parametrize("k", [MAX_HEADER_COLUMNS, 5000])
def test_a_frame_with_many_columns_still_encodes_its_llr_message(k: int) -> None:
    table = _table(k)
    meta, columns = llr_columns(table, evidence_frames=4, vacuum_counts=0.4512345678)
    assert meta["n_columns"] == k
    assert len(columns) == MAX_HEADER_COLUMNS
    parts = encode_frame(
        np.zeros((64, 64), np.float32),
        "run-0042",
        7,
        1.0,
        topic=TOPIC_LLR,
        meta=meta,
        engine="e",
        columns=columns,
    )
    assert len(parts[1]) <= MAX_HEADER_BYTES
    got = decode(parts)
    assert got.header.columns == columns and got.header.meta["n_columns"] == k
    # the first MAX_HEADER_COLUMNS rows, in order, row / col / llr rounded to 3 decimals, region_mean to 6
    want = table[:MAX_HEADER_COLUMNS].astype(np.float64)
    assert np.allclose(np.asarray(columns)[:, :3], want[:, :3], rtol=0, atol=0.0005 + 1e-9)
    assert np.allclose(np.asarray(columns)[:, 3], want[:, 3], rtol=0, atol=5e-7 + 1e-12)


def test_every_listed_value_has_at_most_three_decimals_but_region_mean_six() -> None:
    """region_mean to 6, as vacuum_counts: both ~0.45 counts per detector pixel, and a column's contrast
    region_mean / vacuum_counts - 1 of a 7 % column was coarse to +-1.6 % with 3 (audit h36)."""
    _, columns = llr_columns(_table(500, seed=1))
    values = [v for row in columns for v in row[:3]]
    assert len(values) == 1500
    assert all(round(v, 3) == v for v in values)
    assert all(len(repr(v).split(".")[-1]) <= 3 for v in values)  # as JSON writes them
    means = [row[3] for row in columns]
    assert all(round(v, 6) == v for v in means) and any(round(v, 3) != v for v in means)
