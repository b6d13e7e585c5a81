"""`sbd-stream export REC --kind columns --to csv`: the recorded column tables in a spreadsheet.

Before, the export wrote image stacks only (``--kind`` raw, denoised or llr; ``columns`` was refused) and
docs/service.md said the tables could only be read with h5py or ``recorded_columns``. Checked on real
recordings written by the Recorder through part rolls: every CSV line is a column ``recorded_columns``
reads (and the table that was recorded), an old recording without tables is refused in one line, the
default name, and an existing output kept without ``--overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.formats import column_table
from sbd_stream.formats.column_table import recorded_columns
from sbd_stream.formats.recording import recording_parts
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

N = 12
BLANK = {4}  # no beam: blank, no columns
EMPTY = {7}  # beam, but no column found
NO_LEVEL = {9}  # no vacuum level stated: contrast left empty
FRAME_FIELDS = ["acq", "part", "part_row", "segment", "seq", "ts"]
ROW_FIELDS = ["n_columns", "vacuum_counts", "evidence_frames", "blank", "vacuum_not_flat"]


def _table(q: int) -> np.ndarray:
    k = 0 if q in BLANK | EMPTY else 3 + q % 4
    return np.random.default_rng(q).uniform(0.5, 60.0, (k, 4)).astype(np.float32)


def _vacuum(q: int) -> float | None:
    return None if q in NO_LEVEL else 0.45 + 0.001 * q


def _record(directory: Path, acq: str = "acq", roll: bool = True) -> Path:
    """``N`` frames of raw + llr (with tables and flags), a few frames a part when ``roll``."""
    size = {"max_file_bytes": 60_000} if roll else {}
    rec = Recorder(
        RecordSettings(directory=directory, compression="none", min_free_bytes=0, **size), Metrics()
    )
    for q in range(N):
        ts = 1.7e9 + 0.025 * q
        data = np.random.default_rng(q).poisson(0.45, (64, 64)).astype(np.uint16)
        rec.write(RecordItem("raw", acq, q, ts, data))
        item = RecordItem("llr", acq, q, ts, np.full((64, 64), q, np.float32))
        item.evidence_frames = 1 + q % 3
        flags = {"blank": q in BLANK, "vacuum_not_flat": q == 2}
        item.meta = column_table.row_meta("llr", flags, _table(q), _vacuum(q))
        rec.write(item)
    rec.close_all()
    return directory / f"{acq}.nxs"


def _export(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["export", *args])
    return res.exit_code, res.output


def _lines(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(120)
def test_each_csv_line_is_a_recorded_column_across_part_rolls(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    assert len(recording_parts(rec)) >= 3  # rolled
    out = tmp_path / "cols.csv"
    code, output = _export(str(rec), "--kind", "columns", "--to", "CSV", "--out", str(out))
    assert code == 0, output
    summary = json.loads(output)
    lines = _lines(out)
    want = []
    for r in recorded_columns(rec):
        for values in r.table:
            frame = ["acq", r.part.name, str(r.row), "0", str(r.seq), repr(r.ts)]
            vac = "" if r.vacuum_counts is None else repr(r.vacuum_counts)
            after = [
                str(r.n_columns),
                vac,
                str(r.evidence_frames),
                str(int(r.blank)),
                str(int(r.vacuum_not_flat)),
            ]
            want.append((frame, values, after))
    assert len(lines) == len(want) == sum(len(_table(q)) for q in range(N)) == summary["columns"]
    for line, (frame, values, after) in zip(lines, want, strict=True):
        assert [line[k] for k in FRAME_FIELDS] == frame and [line[k] for k in ROW_FIELDS] == after
        got = np.array([line[k] for k in ("row", "col", "llr", "region_mean")], np.float64).astype(np.float32)
        np.testing.assert_array_equal(got, values)  # the recorded float32, exactly
        if line["vacuum_counts"]:
            assert float(line["contrast"]) == pytest.approx(
                float(values[3]) / float(line["vacuum_counts"]) - 1
            )
        else:
            assert line["contrast"] == ""
    # and what was recorded, frame by frame, in pandas' way of reading it back
    seqs = sorted({int(ln["seq"]) for ln in lines})
    assert seqs == [q for q in range(N) if q not in BLANK | EMPTY]
    for q in seqs:
        mine = np.array(
            [[ln[k] for k in ("row", "col", "llr", "region_mean")] for ln in lines if ln["seq"] == str(q)]
        )
        np.testing.assert_array_equal(mine.astype(np.float64).astype(np.float32), _table(q))
    assert {ln["part"] for ln in lines} == {r.part.name for r in recorded_columns(rec) if r.n_columns}
    counts = {
        k: summary[k] for k in ("frames", "frames_without_columns", "blank_frames", "frames_without_table")
    }
    assert counts == {"frames": N, "frames_without_columns": 2, "blank_frames": 1, "frames_without_table": 0}
    header = [*FRAME_FIELDS, "row", "col", "llr", "region_mean", *ROW_FIELDS, "contrast"]
    assert next(csv.reader(io.StringIO(out.read_text()))) == header


@pytest.mark.timeout(60)
def test_default_name_and_an_existing_output_kept_without_overwrite(tmp_path: Path) -> None:
    rec = _record(tmp_path, roll=False)
    code, output = _export(str(rec), "--kind", "columns", "--to", "csv")
    assert code == 0, output
    default = tmp_path / "acq_columns.csv"
    assert json.loads(output)["output"] == str(default) and len(_lines(default)) > 0
    mine = tmp_path / "mine.csv"
    mine.write_text("my own notes\n")
    code, output = _export(str(rec), "--kind", "columns", "--to", "csv", "--out", str(mine))
    assert code == 2 and "exists; pass --overwrite" in output, output
    assert mine.read_text() == "my own notes\n"
    code, output = _export(str(rec), "--kind", "columns", "--to", "csv", "--out", str(mine), "--overwrite")
    assert code == 0, output
    assert len(_lines(mine)) == json.loads(output)["columns"] > 0
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.timeout(60)
def test_a_recording_made_before_the_table_is_refused_in_one_line(tmp_path: Path) -> None:
    rec = _record(tmp_path, roll=False)
    with h5py.File(rec, "r+") as f:  # the layout before session 31: no table, no row index, no flags
        for name in ("columns", "n_columns", "columns_start", "vacuum_counts", "blank", "vacuum_not_flat"):
            del f[f"entry/llr/{name}"]
    code, output = _export(str(rec), "--kind", "columns", "--to", "csv")
    assert code == 2, output
    (line,) = output.strip().splitlines()
    assert line.startswith("error:") and "before the column table" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acq.nxs"]  # no empty CSV, no partial


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "to", "message"),
    [("columns", "tiff", "--kind columns writes --to csv only"), ("raw", "csv", "give --kind columns")],
)
def test_columns_go_to_csv_and_frames_do_not(tmp_path: Path, kind: str, to: str, message: str) -> None:
    rec = _record(tmp_path, roll=False)
    code, output = _export(str(rec), "--kind", kind, "--to", to)
    assert code == 2 and len(output.strip().splitlines()) == 1 and message in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acq.nxs"]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("default_stop_signals")
def test_a_swallowed_sigterm_stops_the_columns_export_with_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swallowed: list[BaseException | None]
) -> None:
    """A SIGTERM whose raise Python dropped (raised inside a weakref callback: "Exception ignored in")
    ends ``--kind columns`` as a stop does, before its next frame, with no CSV (session 35)."""
    import signal

    from helpers_signals import signal_inside_a_weakref_callback

    import sbd_stream.sinks.export_columns as columns

    rec = _record(tmp_path / "rec", roll=False)
    rows, seen = columns._rows, []

    def swallowing(*args: object) -> object:  # the real rows; the stop lost at the second
        for i, row in enumerate(rows(*args)):
            seen.append(i)
            if i == 1:
                signal_inside_a_weakref_callback(signal.SIGTERM)
            yield row

    monkeypatch.setattr(columns, "_rows", swallowing)
    out = tmp_path / "cols.csv"
    code, output = _export(str(rec), "--kind", "columns", "--to", "csv", "--out", str(out))
    assert len(swallowed) == 1  # the case: the handler's raise was dropped
    assert code == 143, output  # before: 0, the whole table written after the stop
    assert "SIGTERM: export stopped; nothing was written" in output
    assert seen == [0, 1] and not out.exists() and not list(tmp_path.glob(".cols.*"))
