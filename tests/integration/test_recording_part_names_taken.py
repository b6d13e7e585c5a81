"""Every rolled part of a recording is found by its readers, whatever names the folder already holds.

Audit h29 (facility engineer): acquisition ``scan_0001`` recorded first, then ``scan`` rolling into
parts: ``scan``'s part 1 could not take ``scan_0001.nxs`` and got a timestamped name, which no reader
looks for: ``export`` gave 35 of 40 frames, exit 0, without a word. And the reader of ``scan_0001``
took it for a middle part of ``scan`` and walked ``scan_0002.nxs``..., never its own
``scan_0001_0001.nxs``. Real Recorder, real HDF5 files, the real CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import recording_parts
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SAMPLING = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}


def _record(directory: Path, acq: str, n: int) -> None:
    settings = RecordSettings(directory=directory, max_file_bytes=20_000, compression="none")
    rec = Recorder(settings, Metrics(), sampling=SAMPLING)
    for q in range(n):
        frame = np.random.default_rng(q).poisson(0.45, (32, 32)).astype(np.uint16)
        rec.write(RecordItem("raw", acq, q, 100.0 + 0.025 * q, frame))
    rec.close_all()


def _exported_seqs(tmp_path: Path, first: Path) -> list[int]:
    out = tmp_path / f"{first.stem}.npy"
    res = CliRunner().invoke(app, ["export", str(first), "--to", "npy", "--kind", "raw", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return list(range(np.load(out).shape[0]))


def test_every_part_is_found_when_another_acquisition_holds_a_continuation_name(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _record(rec, "scan_0001", 12)  # rolls too: scan_0001.nxs, scan_0001_0001.nxs, ...
    _record(rec, "scan", 40)
    own = recording_parts(rec / "scan_0001.nxs")
    assert len(own) > 1 and all(p.name.startswith("scan_0001") for p in own), own
    parts = recording_parts(rec / "scan.nxs")
    assert len(parts) > 2 and not set(parts) & set(own), parts
    assert not [p for p in rec.iterdir() if "_2026" in p.name or "-" in p.stem], sorted(rec.iterdir())
    assert len(_exported_seqs(tmp_path, rec / "scan.nxs")) == 40  # 35 of 40 before
    assert len(_exported_seqs(tmp_path, rec / "scan_0001.nxs")) == 12  # its first part's 3 before


def test_a_later_part_skips_every_name_taken(tmp_path: Path) -> None:
    """Names taken further up too (``scan_0002``, ``scan_0003``: files of no recording): each part takes
    the next free number above its predecessor's, and the reader walks past the others."""
    rec = tmp_path / "rec"
    rec.mkdir()
    for k in (2, 3):
        (rec / f"scan_{k:04d}.nxs").write_bytes(b"not ours")
    _record(rec, "scan", 40)
    parts = recording_parts(rec / "scan.nxs")
    names = [p.name for p in parts]
    assert names[:3] == ["scan.nxs", "scan_0001.nxs", "scan_0004.nxs"], names
    assert len(_exported_seqs(tmp_path, rec / "scan.nxs")) == 40
