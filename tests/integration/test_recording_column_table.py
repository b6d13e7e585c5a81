"""The column table and frame flags each ``llr`` / ``denoised`` carried live are in the recording.

Before session 31 the recorder stored the maps only: the published ``llr`` header's ``columns``,
``meta.n_columns``, ``meta.vacuum_counts`` and the frames' ``meta.blank`` / ``meta.vacuum_not_flat`` were
lost unless a subscriber kept them (docs/service.md said so). Now each row's table is in ``llr/columns``
(row index ``columns_start`` / ``n_columns``) and the flags are per-row datasets of ``llr`` and
``denoised`` (formats/column_table.py). Checked on a real pipeline (recorder, publisher on loopback)
through part rolls; on a part written before them; and for a process killed between a row's table and
its ``complete``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from conftest import await_subscriber, wait_until

from sbd_stream.config import RecordSettings, load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.column_table import recorded_columns
from sbd_stream.formats.recording import AcqFile, recording_parts
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.llr_table import MAX_HEADER_COLUMNS, llr_columns
from sbd_stream.metrics import Metrics
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration

ACQ = "cols"
N = 10
BLANK = {3, 7}  # no beam: meta.blank on their denoised and llr


def _frame(rng: np.random.Generator, seq: int) -> np.ndarray:
    """Gaussian columns above vacuum at the configured 0.45 counts/px; ``BLANK`` frames all zero."""
    if seq in BLANK:
        return np.zeros((96, 96), np.uint16)
    yy, xx = np.mgrid[:96, :96].astype(np.float32)
    clean = np.full((96, 96), 0.45, np.float32)
    for r in range(12, 60, 12):
        for c in range(12, 90, 12):
            clean += 1.5 * np.exp(-((yy - r - seq % 3) ** 2 + (xx - c) ** 2) / (2 * 2.0**2))
    return rng.poisson(clean).astype(np.uint16)


def _service_keys(meta: dict) -> dict:
    """What the service itself says in an ``llr`` header's meta (the producer's own is in ``raw/meta``)."""
    keys = ("n_columns", "columns_fields", "evidence_frames", "vacuum_counts", "blank", "vacuum_not_flat")
    return {k: meta[k] for k in keys if k in meta}


@pytest.mark.timeout(180)
def test_each_recorded_row_holds_the_published_table_and_flags_through_part_rolls(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    den = Denoiser.load("onnxruntime", tiny_engine_dir)
    s = load_settings(
        overrides={
            "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
            "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000},
            # ~3 frames a part: every row's table must land in its own frame's part
            "record": {"directory": str(tmp_path), "min_free_bytes": 0, "max_file_bytes": 60_000},
            "metrics": {"enabled": False},
            "lanes": {"live": False},  # one lane: every frame published and recorded
            # the tiny engine has random weights: a low threshold makes sure it reports columns at all
            "denoise": {"batch_frames": 2, "likelihood": {"enabled": True, "threshold": 0.001}},
        }
    )
    ctx = zmq.Context.instance()
    pipe = build_pipeline(s, den, source=None, context=ctx)
    pipe.start()
    assert pipe.publisher is not None
    col = Collector(pipe.publisher.endpoint, context=ctx).start()
    rng = np.random.default_rng(31)
    try:
        await_subscriber(pipe.publisher, col)
        for seq in range(N):
            data = _frame(rng, seq)
            pipe.handle_frame(Frame(FrameHeader(ACQ, seq, 1.7e9 + 0.025 * seq, data.shape, "uint16"), data))
        assert wait_until(lambda: len(col.frames(b"llr")) == N and len(col.frames(b"denoised")) == N, 120)
    finally:
        pipe.stop()
        col.close()
    path = tmp_path / f"{ACQ}.nxs"
    assert len(recording_parts(path)) >= 3  # rolled
    live = {m.seq: m.header for m in col.frames(b"llr")}
    rows = list(recorded_columns(path))
    assert sorted(r.seq for r in rows) == list(range(N))
    assert sum(r.n_columns for r in rows) > 0  # the engine found columns to compare
    for r in rows:
        h = live[r.seq]
        meta, columns = r.published()
        assert columns == h.columns and _service_keys(meta) == _service_keys(h.meta), r.seq
        assert r.n_columns == h.meta["n_columns"] == len(r.table)
        assert r.blank is (r.seq in BLANK) and bool(h.meta.get("blank")) is r.blank
        assert r.vacuum_not_flat is bool(h.meta.get("vacuum_not_flat"))
        np.testing.assert_array_equal(
            np.asarray(llr_columns(r.table)[1]).reshape(-1, 4), np.asarray(h.columns).reshape(-1, 4)
        )
    den_flags = {}
    for part in recording_parts(path):  # the flags are on the denoised rows too (likelihood off: there only)
        with open_recording(part) as f:
            g = f["denoised"]
            n = len(g["complete"])
            den_flags.update(zip(g["seq"][:n].tolist(), g["blank"][:n].tolist(), strict=True))
    assert den_flags == {q: int(q in BLANK) for q in range(N)}


def _recorder(directory: Path, **settings) -> Recorder:
    return Recorder(RecordSettings(directory=directory, compression="none", **settings), Metrics())


@pytest.mark.timeout(60)
def test_every_column_is_recorded_not_only_the_wire_headers_first_1000(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    table = np.random.default_rng(1).uniform(0, 512, (MAX_HEADER_COLUMNS + 500, 4)).astype(np.float32)
    h = FrameHeader("many", 0, 1.7e9, (8, 8), "uint16", meta={"vacuum_not_flat": True})
    rec.write(RecordItem("raw", "many", 0, h.ts, np.zeros((8, 8), np.uint16)))
    rec.record(
        "llr", h, np.zeros((8, 8), np.float32), evidence_frames=2, columns=table, vacuum_counts=0.4512345
    )
    rec.start()
    rec.stop()
    rec.join(10)
    (row,) = recorded_columns(tmp_path / "many.nxs")
    np.testing.assert_array_equal(row.table, table)  # all 1500, at the stage's float32 precision
    meta, columns = row.published()
    want_meta, want_columns = llr_columns(table, 2, 0.4512345)  # what the publisher would have sent
    assert columns == want_columns and len(columns) == MAX_HEADER_COLUMNS
    assert meta == {**want_meta, "vacuum_not_flat": True}


@pytest.mark.timeout(60)
def test_a_part_written_before_the_table_still_reads_and_takes_late_rows(tmp_path: Path) -> None:
    """A part of session 30's layout (``llr`` with ``evidence_frames`` only): read with the table and
    flags unknown (None), never refused; a late llr row appended to it keeps its map."""
    rec = _recorder(tmp_path)
    for q in range(2):
        rec.write(RecordItem("raw", "old", q, 1.7e9 + q, np.zeros((8, 8), np.uint16)))
        rec.write(RecordItem("llr", "old", q, 1.7e9 + q, np.full((8, 8), q, np.float32)))
    rec.start()
    rec.stop()
    rec.join(10)
    path = tmp_path / "old.nxs"
    with h5py.File(path, "r+") as f:  # the layout before: no table, no row index, no flags
        for name in ("columns", "n_columns", "columns_start", "vacuum_counts", "blank", "vacuum_not_flat"):
            del f[f"entry/llr/{name}"]
    rows = list(recorded_columns(path))
    assert [(r.seq, r.table, r.n_columns, r.blank, r.vacuum_counts) for r in rows] == [
        (0, None, None, None, None),
        (1, None, None, None, None),
    ]
    af = AcqFile.reopen(path, RecordSettings(directory=tmp_path, compression="none"))
    af.append("llr", 2, 1.7e9 + 2, np.full((8, 8), 2, np.float32), table=np.ones((3, 4)), blank=1)
    af.close()
    rows = list(recorded_columns(path))
    assert [r.seq for r in rows] == [0, 1, 2] and rows[2].table is None
    with open_recording(path) as f:
        np.testing.assert_array_equal(f["llr/frames"][2], np.full((8, 8), 2, np.float32))


CRASH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from pathlib import Path
    from sbd_stream.config import RecordSettings
    from sbd_stream.formats import recording
    d = Path(sys.argv[1])
    s = RecordSettings(directory=d, compression="none")
    af = recording.AcqFile(d / "crash.nxs", (8, 8), np.uint16, s, {"acq": "crash", "created": 1.7e9})
    for q in range(2):
        af.append("raw", q, 1.7e9 + q, np.zeros((8, 8), np.uint16))
        af.append("llr", q, 1.7e9 + q, np.zeros((8, 8), np.float32), table=np.full((2 + q, 4), q), blank=0)
    af.flush()
    from sbd_stream.formats.row_writes import RowColumns
    mark = RowColumns.mark
    def killed_before_complete(self, i):
        if self.kind == "llr":  # the row's table and values are written: die here
            af.f.flush()
            os._exit(9)
        mark(self, i)
    RowColumns.mark = killed_before_complete
    af.append("raw", 2, 1.7e9 + 2, np.zeros((8, 8), np.uint16))
    af.append("llr", 2, 1.7e9 + 2, np.zeros((8, 8), np.float32), table=np.full((50, 4), 7.0), blank=1)
    """
)


@pytest.mark.timeout(60)
def test_a_crash_between_a_rows_table_and_its_complete_leaves_the_row_uncounted(tmp_path: Path) -> None:
    """A process killed after writing row 2's 50-column table and values but before its ``complete``:
    readers see rows 0 and 1 only, and a reopened part writes the next row's table over row 2's, so the
    complete rows' tables stay contiguous."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 9, done.stderr
    path = tmp_path / "crash.nxs"
    with open_recording(path) as f:
        assert f["llr/columns"].shape[0] == 2 + 3 + 50  # the killed row's table is in the file ...
        assert f["llr/n_columns"].shape[0] == 3
    rows = list(recorded_columns(path))  # ... but no counted row points at it
    assert [(r.seq, r.n_columns, r.blank) for r in rows] == [(0, 2, False), (1, 3, False)]
    np.testing.assert_array_equal(rows[1].table, np.full((3, 4), 1, np.float32))
    subprocess.run(
        [sys.executable, "-m", "sbd_stream.sinks.h5clear", str(path)],
        env=env,
        check=True,
        capture_output=True,
    )
    af = AcqFile.reopen(path, RecordSettings(directory=tmp_path, compression="none"))
    af.append("llr", 2, time.time(), np.zeros((8, 8), np.float32), table=np.full((4, 4), 5.0), blank=0)
    af.close()
    rows = list(recorded_columns(path))
    assert [(r.seq, r.n_columns, r.blank) for r in rows] == [(0, 2, False), (1, 3, False), (2, 4, False)]
    np.testing.assert_array_equal(rows[2].table, np.full((4, 4), 5.0, np.float32))
    with open_recording(path) as f:
        assert list(f["llr/columns_start"][:3]) == [0, 2, 5]  # written over the killed row's table


@pytest.mark.timeout(60)
def test_a_reopened_part_whose_last_row_has_no_table_keeps_the_earlier_tables(tmp_path: Path) -> None:
    """Rows written without a table (-1) point nowhere: a part reopened after one appends after the last
    row that has a table, not at 0 over it."""
    s = RecordSettings(directory=tmp_path, compression="none")
    af = AcqFile(tmp_path / "gap.nxs", (8, 8), np.uint16, s, {"acq": "gap", "created": 1.7e9})
    llr = np.zeros((8, 8), np.float32)
    af.append("llr", 0, 1.7e9, llr, table=np.full((3, 4), 1.0))
    af.append("llr", 1, 1.7e9 + 1, llr)  # a Python API row without its table
    af.close()
    af = AcqFile.reopen(tmp_path / "gap.nxs", s)
    af.append("llr", 2, 1.7e9 + 2, llr, table=np.full((2, 4), 2.0))
    af.close()
    rows = list(recorded_columns(tmp_path / "gap.nxs"))
    assert [(r.seq, r.n_columns) for r in rows] == [(0, 3), (1, None), (2, 2)]
    np.testing.assert_array_equal(rows[0].table, np.full((3, 4), 1.0, np.float32))
    np.testing.assert_array_equal(rows[2].table, np.full((2, 4), 2.0, np.float32))
