"""Recordings whose datasets declare more than was written: every reader takes the rows written, in one
line refuses frames the wire format could not carry, and never allocates what the extents claim.

An audit resized a real recording's per-row datasets to 10^12 rows (``export`` and ``replay`` asked for
7.28 TiB for the time column) and replaced its frames by 100000 x 100000 ones (``replay`` allocated
18.6 GiB for one frame, ``replay --offline`` 298 GiB for a batch). Real Recorder files, crafted with
h5py; each reader runs memory-capped in a child (hostile_files.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import craft_frame, craft_rows, one_error_line, run_capped, run_snippet

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

N = 5


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A real recording of ``N`` raw 32 x 24 frames (seq 10..14)."""
    s = RecordSettings(directory=tmp_path / "rec", min_free_bytes=0, record_llr=False, compression="none")
    rec = Recorder(s, Metrics())
    for q in range(N):
        rec.write(RecordItem("raw", "acq", 10 + q, 100.0 + 0.025 * q, np.full((32, 24), q, np.uint16)))
    rec.close_all()
    (path,) = sorted((tmp_path / "rec").glob("*.nxs"))
    return path


def _readers(path: Path) -> dict:
    """What export's survey, replay's source and the offline plan make of ``path`` (child process)."""
    code = f"""
import json
from pathlib import Path
from sbd_stream.service.offline_plan import inspect_recording
from sbd_stream.sinks.export import _survey
from sbd_stream.sources.replay import recorded_series
path, out = Path({str(path)!r}), {{}}
for name, read in (
    ("export", lambda: _survey(path, "raw")["seq"]),
    ("replay", lambda: [seq for _, seq, _, _ in recorded_series(path)]),
    ("offline", lambda: [inspect_recording(path).shape[0]]),
):
    try:
        out[name] = ["ok", read()]
    except BaseException as e:  # a MemoryError is what this test is against
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""
    return run_snippet(code)


@pytest.mark.timeout(300)
def test_rows_declared_but_never_written_are_not_read(recording: Path, tmp_path: Path) -> None:
    crafted = craft_rows(recording, tmp_path / "rows.nxs")
    with h5py.File(crafted) as f:
        assert f["entry/raw/complete"].shape == (10**12,) and f["entry/raw/time"].shape == (10**12,)
    got = _readers(crafted)
    assert got["export"] == ["ok", list(range(10, 10 + N))], got
    assert got["replay"] == ["ok", list(range(10, 10 + N))], got
    assert got["offline"] == ["ok", [N]], got
    r = run_capped(["-m", "sbd_stream", "export", str(crafted), "--to", "npy", "--kind", "raw",
                    "--out", str(tmp_path / "rows.npy")])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["frames"] == N and np.load(tmp_path / "rows.npy").shape == (N, 32, 24)


@pytest.mark.timeout(300)
def test_a_last_row_not_marked_complete_is_not_read(recording: Path, tmp_path: Path) -> None:
    """A row whose ``complete`` was extended but never set (a writer stopped between the two) is no row."""
    cut = tmp_path / "cut.nxs"
    cut.write_bytes(recording.read_bytes())
    with h5py.File(cut, "r+") as f:
        for name in ("frames", "seq", "ts", "frame", "time", "complete"):
            f["entry/raw"][name].resize(N + 1, axis=0)
        f["entry/raw/frames"][N] = 7  # the frame was written, ``complete`` was not
    got = _readers(cut)
    assert got["export"] == ["ok", list(range(10, 10 + N))] and got["offline"] == ["ok", [N]], got


@pytest.mark.timeout(300)
def test_frames_the_wire_format_cannot_carry_are_refused_in_one_line(recording: Path, tmp_path: Path) -> None:
    crafted = craft_frame(recording, tmp_path / "wide.nxs")
    got = _readers(crafted)
    for name, want in (("export", "ExportError"), ("replay", "RecordingError"), ("offline", "StackError")):
        kind, msg = got[name]
        assert kind == want and "100000x100000" in msg and "\n" not in msg, (name, got[name])
    out = tmp_path / "wide.npy"
    cmd = ["-m", "sbd_stream", "export", str(crafted), "--to", "npy", "--kind", "raw", "--out", str(out)]
    line = one_error_line(run_capped(cmd))
    assert str(crafted) in line and "each side must be 1 to 16384" in line


@pytest.mark.timeout(600)
def test_replay_refuses_a_frame_over_the_payload_limit_before_it_starts(
    recording: Path, tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """``replay`` checks each part's frames against ``ingest.max_payload_bytes`` (the live service's
    limit) before the pipeline starts: no thread is left running, no frame read."""
    crafted = craft_frame(recording, tmp_path / "wide.nxs", side=16_384)  # 512 MiB a frame
    engine = ["--model", str(tiny_engine_dir), "--engine", "onnxruntime"]
    cmd = ["-m", "sbd_stream", "replay", str(crafted), *engine]
    line = one_error_line(run_capped(cmd))
    assert "ingest.max_payload_bytes" in line and str(crafted) in line


@pytest.mark.timeout(300)
def test_a_recorded_sampling_that_is_no_number_is_named(recording: Path, tmp_path: Path) -> None:
    bad = tmp_path / "inf.nxs"
    bad.write_bytes(recording.read_bytes())
    with h5py.File(bad, "r+") as f:
        f.attrs["counts_per_px"] = float("inf")
        f.attrs.pop("dose_e_per_A2", None)
    got = run_snippet(f"""
import json
from pathlib import Path
from sbd_stream.service.offline_plan import inspect_recording
try:
    inspect_recording(Path({str(bad)!r}))
    print(json.dumps(["ok", ""]))
except BaseException as e:
    print(json.dumps([type(e).__name__, str(e)]))
""")
    assert got[0] == "StackError" and f"{bad}: attribute counts_per_px: must be" in got[1], got
