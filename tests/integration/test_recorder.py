"""Recorder: layout, rolling, live SWMR reading, a SIGKILLed writer, and a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import iter_recorded, recording_parts
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration


def _counts(seq: int, shape=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seq).poisson(0.45, shape).astype(np.uint16)


@pytest.mark.timeout(60)
def test_layout_attributes_and_round_trip(tmp_path: Path) -> None:
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path), m, card={"name": "tiny"}, run_config={"x": 1})
    rec.write(RecordItem("series_start", "run/1", meta={"mag": 5}))
    for s in range(5):
        rec.write(RecordItem("raw", "run/1", s, 100.0 + s, _counts(s)))
        if s % 2 == 0:
            rec.write(RecordItem("denoised", "run/1", s, 100.0 + s, _counts(s).astype(np.float32) / 2))
            rec.write(RecordItem("llr", "run/1", s, 100.0 + s, np.full((64, 48), s, np.float32)))
    rec.write(RecordItem("series_end", "run/1"))
    path = tmp_path / "run_1.nxs"  # acquisition ids are made safe for file names
    with open_recording(path) as f:
        assert f.attrs["format"] == "sbd-recording/1" and f.attrs["acq"] == "run/1"
        assert json.loads(f.attrs["engine_card"]) == {"name": "tiny"}
        assert json.loads(f.attrs["run_config"]) == {"x": 1}
        assert json.loads(f.attrs["series_meta"]) == {"mag": 5}
        raw = f["raw/frames"]
        assert raw.shape == (5, 64, 48) and raw.dtype == np.uint16 and raw.chunks == (1, 64, 48)
        assert raw.compression is not None or "32008" in str(raw._filters)
        np.testing.assert_array_equal(raw[3], _counts(3))
        np.testing.assert_array_equal(f["raw/seq"][:], np.arange(5))
        np.testing.assert_array_equal(f["raw/ts"][:], 100.0 + np.arange(5))
        np.testing.assert_array_equal(f["raw/complete"][:], np.ones(5))
        np.testing.assert_array_equal(f["denoised/seq"][:], [0, 2, 4])
        np.testing.assert_array_equal(f["denoised/frames"][1], _counts(2).astype(np.float32) / 2)
        np.testing.assert_array_equal(f["llr/frames"][2], np.full((64, 48), 4, np.float32))
    assert m.value("sbd_frames_recorded_total", {"kind": "raw"}) == 5
    # a second acquisition with the same id never overwrites the first file
    rec.write(RecordItem("raw", "run/1", 0, 0.0, _counts(0)))
    rec.close_all()
    assert len(list(tmp_path.glob("run_1*.nxs"))) == 2


@pytest.mark.timeout(60)
def test_rolls_at_size_limit_and_replay_reads_all_parts(tmp_path: Path) -> None:
    m = Metrics()
    s = RecordSettings(directory=tmp_path, max_file_bytes=40_000, compression="none")
    rec = Recorder(s, m)
    for q in range(12):
        rec.write(RecordItem("raw", "acq", q, float(q), _counts(q)))
    rec.close_all()
    parts = recording_parts(tmp_path / "acq.nxs")
    assert len(parts) >= 3 and parts[1].name == "acq_0001.nxs"
    got = list(iter_recorded(tmp_path / "acq.nxs"))
    assert [g[1] for g in got] == list(range(12))
    np.testing.assert_array_equal(got[7][3], _counts(7))


@pytest.mark.timeout(60)
def test_record_suffix_h5_keeps_the_older_name_and_its_parts_are_found(tmp_path: Path) -> None:
    """``record.suffix = ".h5"``: every part ends so, and the readers (replay, export) find them all."""
    s = RecordSettings(directory=tmp_path, max_file_bytes=40_000, compression="none", suffix=".h5")
    rec = Recorder(s, Metrics())
    for q in range(6):
        rec.write(RecordItem("raw", "acq", q, float(q), _counts(q)))
    rec.close_all()
    assert {p.suffix for p in tmp_path.iterdir()} == {".h5"}
    parts = recording_parts(tmp_path / "acq.h5")
    assert len(parts) >= 2 and parts[1].name == "acq_0001.h5"
    assert [g[1] for g in iter_recorded(tmp_path / "acq.h5")] == list(range(6))
    with pytest.raises(ValueError, match="suffix"):
        RecordSettings(suffix=".hdf5")


@pytest.mark.timeout(60)
def test_live_reader_follows_swmr_writer(tmp_path: Path) -> None:
    rec = Recorder(RecordSettings(directory=tmp_path), Metrics())
    rec.write(RecordItem("raw", "live", 0, 0.0, _counts(0)))
    with open_recording(tmp_path / "live.nxs") as f:
        d = f["raw/complete"]
        assert len(d) == 1
        for s in range(1, 4):
            rec.write(RecordItem("raw", "live", s, 0.0, _counts(s)))
        d.refresh()
        f["raw/frames"].refresh()
        assert len(d) == 4
        np.testing.assert_array_equal(f["raw/frames"][3], _counts(3))
    rec.close_all()


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from pathlib import Path
    from sbd_stream.config import RecordSettings
    from sbd_stream.metrics import Metrics
    from sbd_stream.sinks.recorder import Recorder, RecordItem
    rec = Recorder(RecordSettings(directory=Path(sys.argv[1]), min_free_bytes=0), Metrics())
    s = 0
    while True:
        rec.write(RecordItem("raw", "killed", s, float(s),
                             np.random.default_rng(s).poisson(0.45, (64, 48)).astype(np.uint16)))
        print(s, flush=True)
        s += 1
    """
)


@pytest.mark.timeout(90)
def test_sigkilled_writer_leaves_a_readable_file(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    done = -1
    try:
        while done < 30:
            line = proc.stdout.readline()
            assert line, "writer died"
            done = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with open_recording(tmp_path / "killed.nxs") as f:
        n = len(f["raw/complete"])
        assert n >= done + 1  # every frame reported written (flushed) is there
        for s in range(n):
            np.testing.assert_array_equal(f["raw/frames"][s], _counts(s))
        np.testing.assert_array_equal(f["raw/seq"][:n], np.arange(n))


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A real 1 MiB filesystem (tmpfs); skipped where mounting is not permitted."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(60)
def test_full_disk_is_counted_and_survived(tiny_fs: Path, tmp_path: Path) -> None:
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tiny_fs, compression="none", min_free_bytes=0), m)
    rec.start()
    noise = np.random.default_rng(0).integers(0, 65535, (128, 128), dtype=np.uint16)  # 32 kB, incompressible
    for s in range(80):  # 2.5 MB into 1 MiB
        rec.submit(RecordItem("raw", "full", s, 0.0, noise))
    deadline = time.monotonic() + 30
    while m.value("sbd_record_errors_total", {"kind": "disk_full"}) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.value("sbd_record_errors_total", {"kind": "disk_full"}) == 1  # reported once
    # the thread is alive and a new acquisition elsewhere is still recorded
    rec.s = RecordSettings(directory=tmp_path, compression="none", min_free_bytes=0)
    rec.directory = tmp_path
    for s in range(3):
        rec.submit(RecordItem("raw", "after", s, 0.0, noise))
    rec.stop()
    rec.join(30)
    recorded = m.value("sbd_frames_recorded_total", {"kind": "raw"})
    assert 0 < recorded < 80 + 3
    assert m.value("sbd_record_dropped_total") >= 80 - (recorded - 3)
    with h5py.File(tmp_path / "after.nxs", "r") as f:
        assert f["raw/frames"].shape[0] == 3
