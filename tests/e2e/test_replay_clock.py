"""``replay`` and the recorded ``ts`` (audit "clocks", defects 3-5): real recordings, crafted with h5py.

* A row whose ``ts`` names no date (NaN, 1e300) went into the pipeline as it was: a NaN first ``ts``
  made the recorder refuse the whole replayed acquisition (exit 0, nothing written) and the publisher
  raise on that frame. Now the row is skipped, counted and logged once, as live input would be.
* ``--realtime`` waited ``ts`` minus the segment's first ``ts``: a valid far ``ts`` (1e11) overflowed
  the wait (a traceback, exit 1), a jump of hours waited silently for hours, and a late first frame
  sent all the rest at once. Now each frame waits its step from the one before, at most
  ``MAX_REALTIME_GAP_S``, and a longer gap is said once.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import hup_default

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import recording_parts
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import SeriesMessage
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording
from sbd_stream.sources.replay import MAX_REALTIME_GAP_S, ReplaySource

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _recording(directory: Path, ts: list[float]) -> Path:
    """A real recording of ``len(ts)`` raw frames (seq 0..), its ``raw/ts`` then set to ``ts`` as is."""
    rec = Recorder(RecordSettings(directory=directory, min_free_bytes=0, compression="none"), Metrics())
    for q in range(len(ts)):
        rec.write(RecordItem("raw", "acq", q, T0 + q, np.full((32, 24), q, np.uint16)))
    rec.close_all()
    (path,) = directory.glob("*.nxs")
    with h5py.File(path, "r+") as f:
        f["raw/ts"][:] = ts
    return path


@pytest.mark.timeout(240)
def test_realtime_replay_of_far_and_undated_ts_skips_the_bad_rows_and_finishes(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """The real ``sbd-stream replay --realtime --record-dir``: seq 0 NaN (the lost ``nanfirst`` case),
    seq 2 1e11 (valid, year 5138: the overflowing wait), seq 3 1e300, seq 4 back to the present."""
    src = _recording(tmp_path / "src", [float("nan"), T0, 1e11, 1e300, T0 + 0.4])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sbd_stream", "replay", str(src), "--realtime", "--record-dir", str(out),
           "--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--pixel-size", "0.3"]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_METRICS__PORT": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200, preexec_fn=hup_default)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert json.loads(proc.stdout)["frames_fed"] == 3
    bad = [line for line in proc.stderr.splitlines() if "names no date" in line]
    assert len(bad) == 1 and "frame 0 of acq" in bad[0], proc.stderr[-3000:]  # once; then summed up
    assert "2 frames skipped in all for a bad ts" in proc.stderr
    shortened = [line for line in proc.stderr.splitlines() if "wait is shortened" in line]
    assert len(shortened) == 1 and "frame 2" in shortened[0]
    (part,) = recording_parts(out / "acq.nxs")
    with open_recording(part) as f:
        for kind in ("raw", "denoised"):
            assert list(f[f"{kind}/seq"]) == [1, 2, 4], kind
            assert np.isfinite(f[f"{kind}/ts"][:]).all()
        assert f["entry/start_time"][()].decode().startswith("2023-11-14")  # T0, not NaN


def _replay(path: Path, **kw) -> tuple[ReplaySource, list[tuple[int, float]], threading.Thread]:
    """A ``ReplaySource`` on its own thread; what it fed as (seq, perf_counter when fed)."""
    fed: list[tuple[int, float]] = []

    def on_frame(frame: Frame) -> None:
        fed.append((frame.header.seq, time.perf_counter()))

    def on_series(_msg: SeriesMessage) -> None:
        pass

    src = ReplaySource(path, on_frame, on_series, realtime=True, stop=threading.Event(), **kw)
    thread = threading.Thread(target=src.run, daemon=True)
    thread.start()
    return src, fed, thread


@pytest.mark.timeout(60)
def test_realtime_paces_from_the_previous_frame_when_the_first_ts_is_late(tmp_path: Path) -> None:
    """The audit's ``first``: frame 0 stamped 1 h after the rest, then 10 frames 0.15 s apart. Paced from
    the first ``ts``, frames 1-10 were all due an hour ago: they went out in 0.09 s."""
    path = _recording(tmp_path, [T0 + 3600.0] + [T0 + 0.15 * q for q in range(10)])
    src, fed, thread = _replay(path)
    try:
        assert src.done.wait(30)
    finally:
        src._stop.set()
        thread.join(5)
    assert [q for q, _ in fed] == list(range(11))
    steps = [b - a for (_, a), (_, b) in itertools.pairwise(fed[1:])]
    assert min(steps) >= 0.15 - 0.01, steps  # each waited its recorded step (waits only run long)
    assert src.n_gaps_shortened == 0


@pytest.mark.timeout(60)
def test_realtime_shortens_a_gap_of_hours_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's ``gap2``: a jump of 2 h waited 2 h, without a word. Shortened to ``max_gap_s`` (a small
    one here; 10 s by default), logged once; a step back in ``ts`` is sent at once."""
    assert MAX_REALTIME_GAP_S == 10.0
    ts = [0.0, 0.2, 0.4, 7201.0, 7201.2, -3598.6, -3598.4, 20000.0]
    path = _recording(tmp_path, [T0 + t for t in ts])
    with caplog.at_level(logging.DEBUG, "sbd_stream.sources.replay"):
        src, fed, thread = _replay(path, max_gap_s=0.5)
        try:
            assert src.done.wait(30), "still waiting out the recorded gap"
        finally:
            src._stop.set()
            thread.join(5)
    assert [q for q, _ in fed] == list(range(8)) and src.n_gaps_shortened == 2
    assert fed[3][1] - fed[2][1] >= 0.5 - 0.01 and fed[4][1] - fed[3][1] >= 0.2 - 0.01
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "frame 3 comes 7200.6 s after" in warned[0], warned
