"""The per-row values a recording part holds are exactly those appended, after the writer's row writes
were made lean (formats/row_writes.py: one dataspace shared by a row's datasets, a reused buffer per
dataset, extents of ``raw/meta`` / ``llr/columns`` tracked in Python instead of read back).

Why: those shortcuts can each go wrong silently (a row's values written at the previous row, a buffer of
another dataset's dtype casting a value, an extent grown ahead of what readers may see, handles kept
across the reopen that adds a group), and every reader (``iter_recorded``, ``recorded_meta``,
``recorded_columns``, export, replay, HyperSpy) trusts them. So thousands of rows of every kind, past
the per-row datasets' 512-row chunks (``nexus.ROW_CHUNK``: 4096 before, whose 32 KiB chunks the
per-row flush rewrote), the meta's 16 KiB chunk and the table's 1024-entry chunk, each
row with its own values, are read back with h5py's high-level API and compared one by one, and a part
reopened (as after ``max_open_files``) goes on where it stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.formats import nexus
from sbd_stream.formats.column_table import recorded_columns
from sbd_stream.formats.frame_meta import recorded_meta
from sbd_stream.formats.recording import AcqFile

N = 4200  # past the per-row datasets' 512-row chunks, and past the 4096 of older parts
SHAPE = (4, 4)
T0 = 1.7e9


def _meta(i: int) -> dict:
    return {} if i % 7 == 0 else {"T": i, "note": "x" * (i % 13)}  # lengths 0 and 8 to 33 bytes


def _table(i: int) -> np.ndarray | None:
    if i % 11 == 5:
        return None  # no table for this row: n_columns -1, columns_start -1
    k = i % 5  # 0 to 4 columns (0: an empty table)
    return np.arange(4 * k, dtype=np.float32).reshape(k, 4) + i


def _write(af: AcqFile, rows: range) -> None:
    for i in rows:
        seq, ts = 3 * i + 7, T0 + 0.025 * i
        raw = np.full(SHAPE, i % 65536, np.uint16)
        af.append("raw", seq, ts, raw, meta=_meta(i), exposure_s=0.001 * (i % 9))
        flags = {"blank": i % 2, "vacuum_not_flat": (i // 2) % 2}
        af.append("denoised", seq, ts, np.full(SHAPE, i, np.float32), **flags)
        vac = math.nan if i % 3 == 0 else 0.5 + i
        llr = np.full(SHAPE, -i, np.float32)
        af.append("llr", seq, ts, llr, table=_table(i), vacuum_counts=vac, evidence_frames=i % 4, **flags)
        if i % 512 == 0:
            af.flush()


def _check(path: Path, n: int) -> None:
    i = np.arange(n)
    seq, ts = 3 * i + 7, T0 + 0.025 * i
    tables = [_table(j) for j in range(n)]
    ks = np.array([-1 if t is None else len(t) for t in tables])
    starts = np.where(ks >= 0, np.concatenate([[0], np.cumsum(np.maximum(ks, 0))[:-1]]), -1)
    lengths = np.array([len(b"" if not _meta(j) else _json(_meta(j))) for j in range(n)])
    with h5py.File(path, "r") as f:
        for kind in ("raw", "denoised", "llr"):
            g = f[kind]
            for name in [k for k, v in g.items() if isinstance(v, h5py.Dataset) and v.ndim == 1]:
                if name not in ("x", "y", "meta"):  # every per-row dataset: exactly n rows, none ahead
                    assert g[name].shape == (n,), (kind, name)
                    assert g[name].chunks == (nexus.ROW_CHUNK,), (kind, name)
            assert g["frames"].shape == (n, *SHAPE)
            np.testing.assert_array_equal(g["frame"][:], i)
            np.testing.assert_array_equal(g["seq"][:], seq)
            np.testing.assert_array_equal(g["ts"][:], ts)
            np.testing.assert_allclose(g["time"][:], ts - T0, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(g["complete"][:], np.ones(n, np.uint8))
        raw, den, llr = f["raw"], f["denoised"], f["llr"]
        np.testing.assert_array_equal(raw["frames"][:, 0, 0], i % 65536)
        np.testing.assert_array_equal(raw["exposure_s"][:], 0.001 * (i % 9))
        np.testing.assert_array_equal(raw["meta_length"][:], lengths)
        np.testing.assert_array_equal(raw["meta_start"][:], np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        assert raw["meta"].shape == (int(lengths.sum()),)  # grown to what was written, never ahead
        for g in (den, llr):
            np.testing.assert_array_equal(g["blank"][:], i % 2)
            np.testing.assert_array_equal(g["vacuum_not_flat"][:], (i // 2) % 2)
            assert g["blank"].dtype == np.int8
        np.testing.assert_array_equal(llr["frames"][:, 0, 0], -i)
        np.testing.assert_array_equal(llr["evidence_frames"][:], i % 4)
        np.testing.assert_array_equal(llr["n_columns"][:], ks)
        np.testing.assert_array_equal(llr["columns_start"][:], starts)
        vac = llr["vacuum_counts"][:]
        np.testing.assert_array_equal(np.isnan(vac), i % 3 == 0)
        np.testing.assert_array_equal(vac[i % 3 != 0], (0.5 + i)[i % 3 != 0])
        assert llr["columns"].shape == (int(np.maximum(ks, 0).sum()), 4)
    got = list(recorded_meta(path))
    assert [(r.seq, r.meta) for r in got] == [(int(s), _meta(j)) for j, s in enumerate(seq)]
    cols = list(recorded_columns(path))
    for j, r in enumerate(cols):
        if tables[j] is None:
            assert r.table is None and r.n_columns is None
        else:
            np.testing.assert_array_equal(r.table, tables[j])
    assert len(cols) == n


def _json(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode()


def test_every_row_of_every_kind_holds_exactly_its_values(tmp_path: Path) -> None:
    s = RecordSettings(directory=tmp_path, compression="none")
    path = tmp_path / "rows.nxs"
    af = AcqFile(path, SHAPE, np.uint16, s, {"acq": "rows", "created": T0, "t0": T0})
    _write(af, range(N))
    af.close()
    _check(path, N)


def test_a_reopened_part_goes_on_with_the_next_row_of_every_dataset(tmp_path: Path) -> None:
    """Closed and reopened twice (as for ``max_open_files``): handles, dataspaces and the tracked extents of
    ``raw/meta`` / ``llr/columns`` are made again from the file, rows continue without a gap or overlap."""
    s = RecordSettings(directory=tmp_path, compression="none")
    path = tmp_path / "again.nxs"
    af = AcqFile(path, SHAPE, np.uint16, s, {"acq": "again", "created": T0, "t0": T0})
    _write(af, range(300))
    af.close()
    for rows in (range(300, 1100), range(1100, 1500)):
        af = AcqFile.reopen(path, s)
        _write(af, rows)
        af.close()
    _check(path, 1500)
