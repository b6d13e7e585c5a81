"""The recorder under hostile input: format changes roll (never cast), files are bounded, control
messages are never dropped, and one bad item closes its file cleanly instead of killing the thread."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.formats import recording as recording_file
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration


def _rec(tmp_path: Path, **kw) -> tuple[Recorder, Metrics]:
    m = Metrics()
    s = RecordSettings(directory=tmp_path, min_free_bytes=0, record_llr=False, **kw)
    return Recorder(s, m), m


def _raw(acq: str, seq: int, data: np.ndarray) -> RecordItem:
    return RecordItem("raw", acq, seq, float(seq), data)


def _open_h5(directory: Path) -> int:
    n = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            n += target.startswith(str(directory)) and target.endswith(".nxs")
    return n


def test_a_dtype_change_rolls_to_a_new_file_and_keeps_every_value(tmp_path: Path) -> None:
    rec, m = _rec(tmp_path)
    ints = np.full((4, 4), 65535, np.uint16)
    floats = np.full((4, 4), 70000.5, np.float32)  # was stored as 65535: cast into the first dtype
    for i, item in enumerate([_raw("a", 0, ints), _raw("a", 1, floats), _raw("a", 2, floats)]):
        rec.write(item)
        rec.write(RecordItem("denoised", "a", i, 0.0, np.ones((4, 4), np.float32)))
    rec.close_all()
    assert m.value("sbd_record_rolls_total", {"reason": "dtype"}) == 1
    assert m.value("sbd_record_errors_total", {"kind": "io"}) == 0
    with open_recording(tmp_path / "a.nxs") as f:
        assert f["raw/frames"].dtype == np.uint16 and list(f["raw/seq"]) == [0]
    with open_recording(tmp_path / "a_0001.nxs") as f:
        assert f["raw/frames"].dtype == np.float32 and list(f["raw/seq"]) == [1, 2]
        np.testing.assert_array_equal(f["raw/frames"][1], floats)
        assert f.attrs["part"] == 1 and f.attrs["acq"] == "a"


def test_a_shape_change_rolls_and_late_outputs_still_find_their_part(tmp_path: Path) -> None:
    rec, m = _rec(tmp_path)
    small, big = np.ones((4, 4), np.uint16), np.ones((6, 8), np.uint16)
    rec.write(_raw("a", 0, small))
    rec.write(_raw("a", 1, big))  # the raw frame arrives before the first one's denoised output
    rec.write(RecordItem("denoised", "a", 0, 0.0, small.astype(np.float32)))
    rec.write(RecordItem("denoised", "a", 1, 0.0, big.astype(np.float32)))
    rec.close_all()
    assert m.value("sbd_record_rolls_total", {"reason": "shape"}) == 1
    assert m.value("sbd_record_dropped_total") == 0
    with open_recording(tmp_path / "a.nxs") as f:
        assert list(f["raw/seq"]) == [0] and list(f["denoised/seq"]) == [0]
    with open_recording(tmp_path / "a_0001.nxs") as f:
        assert f["raw/frames"].shape == (1, 6, 8) and list(f["denoised/seq"]) == [1]


def test_open_files_are_capped_and_idle_ones_closed_and_outputs_reopen_them(tmp_path: Path) -> None:
    rec, m = _rec(tmp_path, max_open_files=3, idle_close_s=0.3)
    frame = np.ones((4, 4), np.uint16)
    for i in range(10):  # ten acquisitions, none of them ever ends
        rec.write(_raw(f"acq{i}", 0, frame))
        assert len(rec.files) + len(rec.previous) <= 3 and _open_h5(tmp_path) <= 3
    assert m.value("sbd_record_files_closed_total", {"reason": "max_open"}) == 7
    assert m.value("sbd_record_open_files") == 3
    # a denoised frame that trails a closed acquisition: its part is reopened and appended to
    rec.write(RecordItem("denoised", "acq0", 0, 0.0, frame.astype(np.float32)))
    assert m.value("sbd_record_dropped_total") == 0
    time.sleep(0.4)  # deliberate, not a readiness wait: the 0.3 s idle timeout under test must pass
    rec._next_idle_check = 0.0
    rec._tick()
    assert m.value("sbd_record_files_closed_total", {"reason": "idle"}) == 3
    assert m.value("sbd_record_open_files") == 0 and _open_h5(tmp_path) == 0
    with open_recording(tmp_path / "acq0.nxs") as f:
        assert len(f["raw/complete"]) == 1 and len(f["denoised/complete"]) == 1
    rec.write(_raw("acq0", 1, frame))  # the acquisition goes on after an idle close: a new part
    rec.close_all()
    assert sorted(p.name for p in tmp_path.glob("acq0*.nxs")) == ["acq0.nxs", "acq0_0001.nxs"]


def test_more_interleaved_acquisitions_than_open_files_continue_their_own_parts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Round-robin over more acquisitions than ``max_open_files``: least-recently-used closing evicts
    the part the next frame needs. Each frame opened a new part (24 acquisitions: 397 files for 600
    frames), the writer fell behind and the queue dropped 27 % of the raw frames. The part is reopened
    instead: one part per acquisition, every frame and output in it, one WARNING for the lot."""
    rec, m = _rec(tmp_path, max_open_files=3, record_denoised=True)
    frame = np.arange(16, dtype=np.uint16).reshape(4, 4)
    acqs = [f"acq{k}" for k in range(5)]
    with caplog.at_level(logging.INFO, logger="sbd_stream.sinks.recorder"):
        for seq in range(6):
            for a in acqs:
                rec.write(_raw(a, seq, frame + seq))
                rec.write(RecordItem("denoised", a, seq, float(seq), np.full((4, 4), seq, np.float32)))
                assert len(rec.files) + len(rec.previous) <= 3 and _open_h5(tmp_path) <= 3
        rec.write(RecordItem("series_start", "acq0"))  # a boundary: the next frame starts a new part
        rec.write(_raw("acq0", 0, frame))
        rec.write(_raw("acq1", 6, np.ones((6, 8), np.uint16)))  # another shape: a roll, not a reopen
        rec.close_all()
    names = sorted([*(f"{a}.nxs" for a in acqs), "acq0_0001.nxs", "acq1_0001.nxs"])
    assert sorted(p.name for p in tmp_path.glob("*.nxs")) == names
    for a in acqs:
        with open_recording(tmp_path / f"{a}.nxs") as f:
            assert list(f["raw/seq"]) == list(range(6)) and list(f["denoised/seq"]) == list(range(6))
            np.testing.assert_array_equal(f["raw/frames"][5], frame + 5)
            np.testing.assert_array_equal(f["denoised/frames"][3], np.full((4, 4), 3))
    assert m.value("sbd_record_dropped_total") == 0
    warned = [r for r in caplog.records if "is reopened" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING, [r.getMessage() for r in warned]
    closes = [r for r in caplog.records if "record.max_open_files)" in r.getMessage()]
    assert len(closes) == 1  # the first; the others summed up (at DEBUG until the summary line)


def test_series_boundaries_are_never_refused_by_a_full_queue(tmp_path: Path) -> None:
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), m, queue_frames=2)
    frame = np.ones((4, 4), np.uint16)
    assert rec.submit(RecordItem("series_start", "a"))
    assert rec.submit(_raw("a", 0, frame)) and not rec.submit(_raw("a", 1, frame))
    assert rec.submit(RecordItem("series_end", "a"))  # a full queue: still taken
    assert m.value("sbd_record_dropped_total") == 1
    assert m.value("sbd_queue_depth", {"queue": "record"}) == 3
    rec.start()
    rec.stop()
    rec.join(10)
    assert m.value("sbd_queue_depth", {"queue": "record"}) == 0
    assert rec.files == {} and m.value("sbd_record_open_files") == 0


def test_an_unexpected_error_closes_that_file_cleanly_and_the_thread_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec, m = _rec(tmp_path)
    real = recording_file.AcqFile.append
    calls = {"n": 0}

    def flaky(self, kind, seq, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if seq == 2 and kind == "raw":
            raise TypeError("Can't broadcast (5, 5) -> (1, 4, 4)")
        return real(self, kind, seq, *a, **kw)

    monkeypatch.setattr(recording_file.AcqFile, "append", flaky)
    frame = np.arange(16, dtype=np.uint16).reshape(4, 4)
    rec.start()
    for seq in range(5):
        rec.submit(_raw("a", seq, frame + seq))
    assert _wait_for(lambda: m.value("sbd_frames_recorded_total", {"kind": "raw"}) == 4)
    assert rec._thread is not None and rec._thread.is_alive()
    rec.stop()
    rec.join(10)
    assert m.value("sbd_stage_errors_total", {"stage": "recorder", "reason": "TypeError"}) == 1
    assert m.value("sbd_record_files_closed_total", {"reason": "error"}) == 1
    assert (
        m.value("sbd_record_dropped_total") == 1
        and m.value("sbd_stage_restarts_total", {"stage": "recorder"}) == 0
    )
    with open_recording(tmp_path / "a.nxs") as f:  # closed cleanly: the two complete rows read back
        assert list(f["raw/seq"][: len(f["raw/complete"])]) == [0, 1]
    with open_recording(tmp_path / "a_0001.nxs") as f:  # the next frame opened a new part
        assert list(f["raw/seq"]) == [3, 4]
        np.testing.assert_array_equal(f["raw/frames"][1], frame + 4)


def _wait_for(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.02)
    return ok


@pytest.mark.parametrize("threaded", [False, True])
def test_outputs_sent_back_to_back_across_rolls_land_in_their_raw_frames_part(
    tmp_path: Path, threaded: bool
) -> None:
    """Every raw frame first, then every output: dtype, shape and dtype+shape rolls between them.

    Routing by shape put frame 1's denoised row in the part after a dtype roll (same shape);
    each output now goes to the part its raw frame is in, checked by sequence numbers.
    """
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0, compress_threads=2), m)
    u16, f32 = np.ones((4, 4), np.uint16), np.ones((4, 4), np.float32)
    raws = [u16, u16, f32, f32, np.ones((6, 8), np.float32), u16, u16]  # parts: 0-1, 2-3, 4, 5-6
    items = [_raw("a", q, fr) for q, fr in enumerate(raws)]
    for kind in ("denoised", "llr"):
        items += [RecordItem(kind, "a", q, float(q), fr.astype(np.float32)) for q, fr in enumerate(raws)]
    if threaded:
        rec.start()
        assert all(rec.submit(item) for item in items)
        rec.stop()
        rec.join(30)
    else:
        for item in items:
            rec.write(item)
        rec.close_all()
    assert m.value("sbd_record_dropped_total") == 0
    assert m.value("sbd_frames_recorded_total", {"kind": "denoised"}) == len(raws)
    names = ["a.nxs", "a_0001.nxs", "a_0002.nxs", "a_0003.nxs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name, seqs in zip(names, ([0, 1], [2, 3], [4], [5, 6]), strict=True):
        with open_recording(tmp_path / name) as f:
            assert list(f["raw/seq"]) == seqs, name
            for kind in ("denoised", "llr"):
                assert list(f[f"{kind}/seq"]) == seqs, (name, kind)
                np.testing.assert_array_equal(f[f"{kind}/frames"][:], np.stack([raws[q] for q in seqs]))


def test_a_part_is_laid_out_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ts no date can name (refused at the edge since) once left a file holding only /entry."""
    rec, m = _rec(tmp_path)
    frame = np.ones((4, 4), np.uint16)
    with pytest.raises(OverflowError):  # the recorder thread's supervisor counts this one
        rec.write(RecordItem("raw", "a", 0, 1e308, frame))
    assert list(tmp_path.iterdir()) == []  # removed, not left without its datasets
    # a first row that fails to write leaves a part with every raw dataset, and no row counted
    real = recording_file.AcqFile.append

    def fails_once(self, kind, seq, *a, **kw):  # type: ignore[no-untyped-def]
        if seq == 0:
            raise ValueError("disk hiccup")
        return real(self, kind, seq, *a, **kw)

    monkeypatch.setattr(recording_file.AcqFile, "append", fails_once)
    rec.write(RecordItem("raw", "b", 0, 5.0, frame))
    assert m.value("sbd_record_errors_total", {"kind": "io"}) == 1
    with open_recording(tmp_path / "b.nxs") as f:
        assert {"frames", "frame", "time", "seq", "ts", "complete"} <= set(f["entry/raw"])
        assert len(f["raw/complete"]) == 0


def test_a_new_series_start_of_a_recorded_acquisition_rolls_to_a_new_part(tmp_path: Path) -> None:
    rec, m = _rec(tmp_path)
    rec.write(RecordItem("series_start", "a", meta={}))  # the first start opens nothing: no roll
    for seq in range(2):
        rec.write(_raw("a", seq, np.full((4, 4), seq, np.uint16)))
    rec.write(RecordItem("series_start", "a", meta={"again": True}))  # the series starts over
    rec.write(_raw("a", 0, np.full((4, 4), 9, np.uint16)))
    rec.close_all()
    assert m.value("sbd_record_rolls_total", {"reason": "series_start"}) == 1
    with open_recording(tmp_path / "a.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1]
    with open_recording(tmp_path / "a_0001.nxs") as f:
        assert list(f["raw/seq"]) == [0] and f["raw/frames"][0, 0, 0] == 9


def test_a_restarted_numbering_rolls_and_the_old_runs_outputs_keep_their_part(tmp_path: Path) -> None:
    """A producer restart without series_start (``RecordItem.restart``): one part per run, so no part
    holds one seq twice; an output of the old run still on its way goes to the old part."""
    rec, m = _rec(tmp_path)
    frame = np.ones((4, 4), np.uint16)
    for seq in range(5):
        rec.write(_raw("a", seq, frame))
    rec.write(RecordItem("raw", "a", 0, 50.0, frame * 2, restart=True))
    rec.write(RecordItem("raw", "a", 1, 51.0, frame * 2))
    rec.write(RecordItem("denoised", "a", 4, 4.0, frame.astype(np.float32)))  # the old run's last
    rec.write(RecordItem("denoised", "a", 0, 50.0, frame.astype(np.float32)))  # the new run's first
    rec.write(RecordItem("raw", "b", 3, 0.0, frame, restart=True))  # a new acquisition: no roll
    rec.close_all()
    assert m.value("sbd_record_rolls_total", {"reason": "restart"}) == 1
    with open_recording(tmp_path / "a.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1, 2, 3, 4] and list(f["denoised/seq"]) == [4]
    with open_recording(tmp_path / "a_0001.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1] and list(f["denoised/seq"]) == [0]
        assert list(f["raw/time"]) == [0.0, 1.0]  # the new run's time axis starts again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nxs", "a_0001.nxs", "b.nxs"]


@pytest.mark.parametrize("compress_threads", [0, 2])
def test_denoised_values_beyond_float16_are_clipped_and_counted_not_stored_as_inf(
    tmp_path: Path, compress_threads: int, caplog: pytest.LogCaptureFixture
) -> None:
    """float16 holds at most 65504: larger denoised values became inf in the file (through numpy's cast
    with the pool, through HDF5's conversion without), with a bare RuntimeWarning as the only trace."""
    m = Metrics()
    s = RecordSettings(directory=tmp_path, min_free_bytes=0, compress_threads=compress_threads)
    rec = Recorder(s, m)
    raw = np.zeros((2, 3), np.uint16)
    hot = np.array([[1.5, 7e4, -1e5], [np.nan, np.inf, 65504.0]], np.float32)
    items = [_raw("a", q, raw) for q in range(3)]
    items += [RecordItem("denoised", "a", q, 0.0, hot) for q in range(2)]
    items.append(RecordItem("denoised", "a", 2, 0.0, np.full((2, 3), 3.25, np.float32)))  # a normal frame
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        rec.start()
        assert all(rec.submit(item) for item in items)
        rec.stop()
        rec.join(30)
    assert [str(w.message) for w in caught] == []  # no "overflow encountered in cast" on stderr
    assert m.value("sbd_recorded_clipped_pixels_total") == 2 * 3  # 7e4, -1e5, inf in each hot frame
    said = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(said) == 1 and "sbd_recorded_clipped_pixels_total" in said[0]  # logged once
    with open_recording(tmp_path / "a.nxs") as f:
        stored = f["denoised/frames"][:]
    assert stored.dtype == np.float16 and not np.isinf(stored).any()
    np.testing.assert_array_equal(stored[0, 0], np.float16([1.5, 65504, -65504]))
    assert np.isnan(stored[0, 1, 0]) and stored[0, 1, 1] == 65504 and stored[0, 1, 2] == 65504  # NaN kept
    assert (stored[2] == np.float16(3.25)).all()


def test_an_acquisition_id_never_names_a_hidden_file(tmp_path: Path) -> None:
    """Leading dots became a hidden file (``rec/.._.._audit-escape.nxs``), which ls does not show."""
    assert [recording_file.safe_name(a) for a in (".", "..", "...x", ".a.b", "a.b")] == [
        "_",
        "__",
        "___x",
        "_a.b",
        "a.b",
    ]
    rec, _ = _rec(tmp_path)
    for acq in ("..", "../../audit-escape", ".hidden"):
        rec.write(_raw(acq, 0, np.ones((4, 4), np.uint16)))
    rec.close_all()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["__.nxs", "___.._audit-escape.nxs", "_hidden.nxs"]
    with open_recording(tmp_path / "___.._audit-escape.nxs") as f:
        assert f.attrs["acq"] == "../../audit-escape"  # the id itself is kept as sent
