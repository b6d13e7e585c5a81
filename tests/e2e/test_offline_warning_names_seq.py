"""`sbd-stream denoise REC.nxs` (a process) names a recording's frame by its seq, as the service does.

An independent client (audit h28, item 10) denoised a recording whose frames 50-51 never arrived: the
service had logged "frame 90: ... beam blanked?" for the blank frame (and ``/seq`` of the output says
90), the offline job "frame 88", the frame's row, so the two logs disagreed about the same frame.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
SEQS = (0, 1, 2, 7, 8, 9)  # seq 3-6 never arrived: row 4 is seq 8
BLANK_SEQ, BLANK_ROW = 8, 4


def _record(directory: Path) -> Path:
    """A recording as `serve` writes it (the recorder itself), with a gap and a frame without beam."""
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=directory, min_free_bytes=0), Metrics(), sampling=sampling)
    rng = np.random.default_rng(7)
    for q in SEQS:
        raw = rng.poisson(0.45, (48, 40)).astype(np.uint16) * (q != BLANK_SEQ)  # all zeros: no beam
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, raw))
    rec.close_all()
    return directory / "acq.nxs"


@pytest.mark.timeout(300)
def test_the_blank_frame_warning_names_the_recorded_seq(tiny_engine_dir: Path, tmp_path: Path) -> None:
    rec, out = _record(tmp_path), tmp_path / "out.h5"
    cmd = [SBD, "denoise", str(rec), str(out), "--model", str(tiny_engine_dir), "--scheduler", "none"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    with h5py.File(out) as f:  # the output joins the row to its seq: the frame is row 4, seq 8
        assert f["seq"][:].tolist() == list(SEQS)
        assert np.flatnonzero(f["blank_frames"][:]).tolist() == [BLANK_ROW]
    said = [ln for ln in res.stderr.splitlines() if "beam blanked?" in ln]
    assert len(said) == 1, res.stderr[-3000:]
    assert f"frame {BLANK_SEQ}: " in said[0] and f"frame {BLANK_ROW}: " not in said[0], said[0]
