"""Which parts make one recording, in which order: runs, segments, shape rolls and size rolls.

Real Recorder, real HDF5 files, read back by the real readers (``export``, ``inspect_recording``,
``ReplaySource``): the audit found run 2's parts spliced onto run 1, two series interleaved by ``seq``,
a replay writing each ``seq`` twice into one part, middle parts that could not be read on their own,
and empty parts left by a size roll.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import recording_parts
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_START, SeriesMessage
from sbd_stream.service.offline_plan import inspect_recording, recording_index
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording
from sbd_stream.sources.replay import ReplaySource

pytestmark = pytest.mark.integration

SHAPE = (20, 12)  # 480 bytes a uint16 frame: max_file_bytes=2_000 rolls every few frames


def _frame(q: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(q).poisson(0.45, shape).astype(np.uint16)


def _recorder(directory: Path, **kw) -> Recorder:
    s = RecordSettings(directory=directory, min_free_bytes=0, record_llr=False, compression="none", **kw)
    return Recorder(s, Metrics())


def _export(*args: str) -> dict:
    res = CliRunner().invoke(app, ["export", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _raw_npy(path: Path, out: Path) -> tuple[np.ndarray, dict]:
    summary = _export(str(path), "--to", "npy", "--kind", "raw", "--out", str(out))
    return np.load(out), json.loads(Path(summary["sidecar"]).read_text()) | {"summary": summary}


def _shape(path: Path) -> tuple[int, ...]:
    with open_recording(path) as f:
        return tuple(f["raw/frames"].shape[1:])


def _attr(path: Path, name: str):
    with open_recording(path) as f:
        v = f.attrs[name]
    return v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)


def test_two_serve_runs_of_one_acquisition_in_one_folder_are_never_spliced(tmp_path: Path) -> None:
    """Run 2's continuations took the free ``a_0001.nxs``... names: reading run 1 returned run 2's
    frames too, and run 2 could not be read from its own first part."""
    for run, base in ((1, 0), (2, 100)):
        rec = _recorder(tmp_path, max_file_bytes=2_000)
        for q in range(10):
            rec.write(RecordItem("raw", "a", q, 100.0 + 0.025 * q, _frame(base + q)))
        rec.close_all()
        if run == 1:
            run1 = sorted(tmp_path.glob("a*.nxs"))
    run2 = sorted(set(tmp_path.glob("a*.nxs")) - set(run1))
    first2 = next(p for p in run2 if _attr(p, "part") == 0)
    assert first2.name != "a.nxs" and len(run2) >= 2
    assert all(p.name.startswith(first2.stem) for p in run2)  # named after run 2's first part
    assert len({_attr(p, "run_uid") for p in run1}) == 1 and len({_attr(p, "run_uid") for p in run2}) == 1
    assert _attr(run1[0], "run_uid") != _attr(first2, "run_uid")
    assert recording_parts(tmp_path / "a.nxs") == run1
    assert recording_parts(first2) == sorted(run2, key=lambda p: _attr(p, "part"))
    got1, _ = _raw_npy(tmp_path / "a.nxs", tmp_path / "r1.npy")
    got2, _ = _raw_npy(first2, tmp_path / "r2.npy")
    np.testing.assert_array_equal(got1, np.stack([_frame(q) for q in range(10)]))
    np.testing.assert_array_equal(got2, np.stack([_frame(100 + q) for q in range(10)]))


def test_a_part_of_another_run_under_a_continuation_name_is_left_out(tmp_path: Path) -> None:
    """Names alone cannot tell runs apart (a part named before this fix, a file copied in): run_uid can."""
    for base in (0, 100):
        rec = _recorder(tmp_path)
        rec.write(RecordItem("raw", "a", 0, 1.0, _frame(base)))
        rec.close_all()
    other = next(p for p in tmp_path.glob("a_*.nxs"))
    other.rename(tmp_path / "a_0001.nxs")  # run 2's first part where run 1's continuation would be
    assert recording_parts(tmp_path / "a.nxs") == [tmp_path / "a.nxs"]
    got, _ = _raw_npy(tmp_path / "a.nxs", tmp_path / "r.npy")
    np.testing.assert_array_equal(got, _frame(0)[None])


@pytest.mark.parametrize("boundary", ["series_start", "restart"])
def test_two_series_of_one_acquisition_export_one_after_the_other(tmp_path: Path, boundary: str) -> None:
    """Both series count seq from 0: export sorted by seq alone interleaved them (0, 0, 1, 1, ...)."""
    rec = _recorder(tmp_path, max_file_bytes=2_000)
    rec.write(RecordItem("series_start", "a"))
    for q in range(6):
        rec.write(RecordItem("raw", "a", q, 100.0 + 0.025 * q, _frame(q)))
    if boundary == "series_start":
        rec.write(RecordItem("series_start", "a"))
    for q in range(6):
        item = RecordItem("raw", "a", q, 500.0 + 0.025 * q, _frame(50 + q), restart=q == 0)
        rec.write(item)
    rec.write(RecordItem("raw", "a", 6, 500.15, _frame(56, (8, 8))))  # a shape roll keeps the segment
    rec.close_all()
    parts = recording_parts(tmp_path / "a.nxs")
    segments = [_attr(p, "segment") for p in parts]
    assert segments == sorted(segments) and segments[0] == 0 and segments[-1] == 1
    assert _attr(parts[-1], "segment") == _attr(parts[-2], "segment")  # the shape roll
    got, side = _raw_npy(tmp_path / "a.nxs", tmp_path / "r.npy")  # stops before the 8x8 part
    want = np.stack([_frame(q) for q in range(6)] + [_frame(50 + q) for q in range(6)])
    np.testing.assert_array_equal(got, want)
    assert side["frame_numbers"] == [*range(6), *range(6)] and side["segment"] == [0] * 6 + [1] * 6
    assert side["summary"]["frame_interval_s"] == pytest.approx(0.025)


def test_replay_sends_each_segment_as_its_own_series_so_no_part_holds_a_seq_twice(tmp_path: Path) -> None:
    """``replay REC --record-dir NEW`` of a producer restart put both runs into one part of NEW."""
    src, new = tmp_path / "src", tmp_path / "new"
    rec = _recorder(src)
    rec.write(RecordItem("series_start", "a", meta={"mag": 5}))
    for run in range(2):
        for q in range(3):
            restart = run == 1 and q == 0  # the producer came back, without series_start
            rec.write(RecordItem("raw", "a", q, 10.0 * run + q, _frame(10 * run + q), restart=restart))
    rec.close_all()
    again = _recorder(new)
    starts: list[dict] = []

    def on_series(msg: SeriesMessage) -> None:
        kind = "series_start" if msg.topic == TOPIC_SERIES_START else "series_end"
        if kind == "series_start":
            starts.append(msg.header.meta)
        again.write(RecordItem(kind, msg.header.acq, meta=msg.header.meta))

    def on_frame(fr: Frame) -> None:
        again.write(RecordItem("raw", fr.header.acq, fr.header.seq, fr.header.ts, fr.data))

    ReplaySource(src / "a.nxs", on_frame, on_series).run()
    again.close_all()
    assert len(starts) == 2 and all(m["mag"] == 5 and m["replay_of"] for m in starts)
    parts = recording_parts(new / "a.nxs")
    assert len(parts) == 2
    for p in parts:
        with open_recording(p) as f:
            seqs = list(f["raw/seq"])
            assert len(seqs) == len(set(seqs)) == 3
            assert json.loads(f.attrs["series_meta"])["mag"] == 5
    assert [_attr(p, "segment") for p in parts] == [0, 1]


def test_a_middle_part_reads_on_its_own_and_readers_stop_at_a_shape_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``export a_0001.nxs`` failed on a later part's other shape; readers now take the parts from the
    given one that share its frames and name the file to give next."""
    rec = _recorder(tmp_path, max_file_bytes=2_000)
    for q in range(8):
        rec.write(RecordItem("raw", "a", q, float(q), _frame(q)))
    for q in range(8, 10):
        rec.write(RecordItem("raw", "a", q, float(q), _frame(q, (8, 8))))
    rec.close_all()
    parts = recording_parts(tmp_path / "a.nxs")
    small = next(p for p in parts if _shape(p) == (8, 8))
    with caplog.at_level(logging.WARNING):
        got, side = _raw_npy(tmp_path / "a.nxs", tmp_path / "all.npy")
    assert side["frame_numbers"] == list(range(8)) and small.name in caplog.text
    np.testing.assert_array_equal(got, np.stack([_frame(q) for q in range(8)]))
    middle = tmp_path / "a_0001.nxs"
    with open_recording(middle) as f:
        first_seq = int(f["raw/seq"][0])
    got, side = _raw_npy(middle, tmp_path / "mid.npy")
    assert side["frame_numbers"] == list(range(first_seq, 8))
    got, side = _raw_npy(small, tmp_path / "small.npy")
    assert side["frame_numbers"] == [8, 9] and got.shape == (2, 8, 8)
    # `denoise PART` / `replay --offline PART` (a recording, no -d): its rows, with seq and ts
    src = inspect_recording(middle)
    assert src.shape == (8 - first_seq, *SHAPE)
    index = recording_index(src)
    assert list(index["seq"]) == list(range(first_seq, 8)) and list(index["ts"]) == list(range(first_seq, 8))


def test_a_size_roll_never_leaves_an_empty_part_even_with_late_outputs(tmp_path: Path) -> None:
    """A roll after any write (an output into a part reopened for late outputs, or the last raw frame)
    opened a part with 0 raw rows, which HyperSpy cannot open."""
    rec = _recorder(tmp_path, max_file_bytes=2_000, max_open_files=1)
    for q in range(9):
        rec.write(RecordItem("raw", "a", q, float(q), _frame(q)))
    for q in range(9):  # late outputs: their parts were closed (one open file at most), so reopened
        rec.write(RecordItem("denoised", "a", q, float(q), _frame(q).astype(np.float32)))
    rec.close_all()
    parts = sorted(tmp_path.glob("a*.nxs"))
    assert len(parts) >= 3
    raw_seqs, den_seqs = [], []
    for p in parts:
        with open_recording(p) as f:
            assert len(f["raw/complete"]) > 0, f"{p.name} holds no raw frame"
            raw_seqs += list(f["raw/seq"])
            den_seqs += list(f["denoised/seq"]) if "denoised" in f else []
    assert sorted(raw_seqs) == list(range(9)) and sorted(den_seqs) == list(range(9))


@pytest.mark.timeout(240)
def test_replay_record_dir_of_a_restart_keeps_each_seq_once_per_part(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """The real ``sbd-stream replay REC --record-dir NEW`` (the whole pipeline) on a producer restart."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    rec = _recorder(src)
    rec.write(RecordItem("series_start", "a", meta={"mag": 5}))
    for run in range(2):
        for q in range(3):
            restart = run == 1 and q == 0
            rec.write(RecordItem("raw", "a", q, 10.0 * run + q, _frame(10 * run + q), restart=restart))
    rec.close_all()
    sbd = str(Path(sys.executable).parent / "sbd-stream")
    cmd = [
        sbd, "replay", str(src / "a.nxs"), "--record-dir", str(tmp_path / "out"),
        "--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--batch", "2",
        "--pixel-size", "0.06", "--dose", "125",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_METRICS__PORT": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = set()
    for p in recording_parts(tmp_path / "out" / "a.nxs"):
        with open_recording(p) as f:
            seqs = list(f["raw/seq"])
            assert len(seqs) == len(set(seqs)), f"{p.name} holds a seq twice: {seqs}"
            got |= {(int(f.attrs["segment"]), s) for s in seqs}
            meta = json.loads(f.attrs["series_meta"])
            assert meta["mag"] == 5 and meta["replay_of"] == str(src / "a.nxs")
    assert got == {(g, s) for g in (0, 1) for s in range(3)}


def test_a_reused_acquisition_name_keeps_each_series_outputs_and_parts_apart(tmp_path: Path) -> None:
    """Two series under one ``acq`` name, both numbered from 0, sent back to back: the service hands
    series B's ``series_start`` and raw frames to the recorder on arrival, but series A's late outputs
    (the complete lane) and A's ``series_end`` only after A's frames are denoised. A's outputs must land
    in A's part (they landed in B's, under B's seq 2 and 3), and A's late ``series_end`` must not close
    B's part (B was split into two parts)."""
    rec = _recorder(tmp_path)
    a = [np.full(SHAPE, 1, np.uint16) * q for q in range(4)]  # A's frames: q counts everywhere
    b = [np.full(SHAPE, 100, np.uint16) + q for q in range(6)]  # B's: 100 + q
    ts_a, ts_b = 1000.0, 2000.0

    def out(seq: int, ts: float, raw: np.ndarray) -> RecordItem:  # the "denoised" frame: its raw, + 0.5
        return RecordItem("denoised", "live", seq, ts, raw.astype(np.float32) + 0.5)

    rec.write(RecordItem("series_start", "live"))
    for q in range(4):
        rec.write(RecordItem("raw", "live", q, ts_a + q, a[q]))
    rec.write(out(0, ts_a, a[0]))
    rec.write(out(1, ts_a + 1, a[1]))
    rec.write(RecordItem("series_start", "live"))  # B arrives while A's frames 2, 3 are still denoised
    for q in range(4):
        rec.write(RecordItem("raw", "live", q, ts_b + q, b[q]))
    rec.write(out(2, ts_a + 2, a[2]))  # A's late outputs
    rec.write(out(3, ts_a + 3, a[3]))
    rec.write(RecordItem("series_end", "live", series=1))  # A's end, after its outputs
    for q in range(4):
        rec.write(out(q, ts_b + q, b[q]))
    for q in range(4, 6):
        rec.write(RecordItem("raw", "live", q, ts_b + q, b[q]))
        rec.write(out(q, ts_b + q, b[q]))
    rec.write(RecordItem("series_end", "live", series=2))
    rec.close_all()
    parts = recording_parts(tmp_path / "live.nxs")
    assert len(parts) == 2, [p.name for p in parts]  # A, then B in one part
    for part, frames in zip(parts, (a, b), strict=True):
        with open_recording(part) as f:
            raw = {int(q): f["raw/frames"][i] for i, q in enumerate(f["raw/seq"][:])}
            den = [(int(q), f["denoised/frames"][i]) for i, q in enumerate(f["denoised/seq"][:])]
        assert sorted(raw) == list(range(len(frames)))
        assert sorted(q for q, _ in den) == list(range(len(frames))), [q for q, _ in den]  # each once
        for q, d in den:
            np.testing.assert_array_equal(d, frames[q].astype(np.float32) + 0.5)


def test_the_recorder_sink_tells_the_recorder_which_series_an_end_closes(tmp_path: Path) -> None:
    """The service's half of the above: series_start / series_end messages reach the sink on arrival,
    the end again (``series_done``) only after its series' outputs. The sink hands the recorder each
    end with the number of starts seen when it arrived, so A's end, done after B's start, reads 1."""
    from sbd_stream.protocol import TOPIC_SERIES_END, SeriesHeader
    from sbd_stream.service.sink import RecorderSink

    rec = _recorder(tmp_path)
    sink = RecorderSink(rec)

    def msg(topic: bytes) -> SeriesMessage:
        return SeriesMessage(topic, SeriesHeader("live", 0.0))

    sink.series_arrived(msg(TOPIC_SERIES_START))  # A
    sink.series_arrived(msg(TOPIC_SERIES_END))
    sink.series_arrived(msg(TOPIC_SERIES_START))  # B arrives before A's frames are all denoised
    sink.series_done(msg(TOPIC_SERIES_END))  # A's end
    sink.series_arrived(msg(TOPIC_SERIES_END))
    sink.series_done(msg(TOPIC_SERIES_END))  # B's end
    sink.series_done(msg(TOPIC_SERIES_END))  # an end that never arrived as such: closes, as before
    items = [rec.queue.get_nowait() for _ in range(len(rec.queue))]
    assert [(i.kind, i.series) for i in items] == [
        ("series_start", None),
        ("series_start", None),
        ("series_end", 1),
        ("series_end", 2),
        ("series_end", None),
    ]


def test_outputs_find_their_raw_frames_part_by_receive_number(tmp_path: Path) -> None:
    """An acq name reused for series whose ``seq`` AND ``ts`` restart at 0 (ts = seconds since the
    series start), and more series than the recorder keeps closed parts of (64): each late output
    goes to the part holding its raw frame, found by the frame's receive number (``FrameHeader.rx``,
    set by the service's intake). By (acq, seq, ts) the outputs of one series went to the next one's
    part (stress audit: 26 seqs doubled), and parts closed 64 series earlier were not reopened at all
    (172 denoised frames of a 100-series run dropped)."""
    rec = _recorder(tmp_path)
    rx = 0
    late: list[RecordItem] = []
    for series in range(70):
        rec.write(RecordItem("series_start", "tilt"))
        for q in range(3):
            frame = np.full(SHAPE, series, np.uint16)
            rec.write(RecordItem("raw", "tilt", q, q * 0.025, frame, rx=rx))
            out = RecordItem("denoised", "tilt", q, q * 0.025, frame.astype(np.float32) + 0.5, rx=rx)
            (late if series == 0 or q == 2 else []).append(out)  # series 0 and every last frame: late
            if not (series == 0 or q == 2):
                rec.write(out)
            rx += 1
        rec.write(RecordItem("series_end", "tilt", series=series + 1))
    for out in late:  # the complete lane, long after: series 0 is 69 series (parts) back
        rec.write(out)
    rec.close_all()
    parts = recording_parts(tmp_path / "tilt.nxs")
    assert len(parts) == 70
    for series, part in enumerate(parts):
        with open_recording(part) as f:
            seqs = sorted(int(q) for q in f["denoised/seq"][:])
            values = {float(v) for v in np.asarray(f["denoised/frames"][:]).ravel()}
        assert seqs == [0, 1, 2], (part.name, seqs)  # each once, none missing, none from another series
        assert values == {series + 0.5}, (part.name, values)


def test_a_part_cut_short_at_creation_is_left_out_not_fatal(tmp_path: Path) -> None:
    """A SIGKILL while a part is being created can leave a 48-byte stub (an HDF5 superblock and no
    more). ``export`` and ``replay`` of the run ended in a traceback ("Can't deserialize object header
    prefix", a RuntimeError the readers did not expect); the stub is now left out with a warning."""
    rec = _recorder(tmp_path, max_file_bytes=2_000, flush_every=1)
    for q in range(12):
        rec.write(RecordItem("raw", "cut", q, 100.0 + q, _frame(q)))
    rec.close_all()
    parts = recording_parts(tmp_path / "cut.nxs")
    assert len(parts) > 2
    stub = parts[-1].with_name(f"cut_{len(parts):04d}.nxs")
    stub.write_bytes(parts[0].read_bytes()[:48])  # the superblock a killed creation leaves
    assert recording_parts(tmp_path / "cut.nxs") == parts
    raw, _ = _raw_npy(tmp_path / "cut.nxs", tmp_path / "cut.npy")
    assert raw.shape[0] == 12


def test_a_part_is_named_only_once_laid_out(tmp_path: Path) -> None:
    """A process killed while HDF5 laid a part out left that stub under the part's own name (above);
    parts are now laid out under a hidden temporary name and linked to theirs when complete, and an
    existing file is never replaced, not even by a second recorder choosing the same name."""
    import subprocess
    import sys

    target = tmp_path / "kill.nxs"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from sbd_stream.formats.recording import _create_whole\n"
        "def lay_out(f):\n"
        "    f.attrs['acq'] = 'kill'\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "_create_whole(Path(sys.argv[1]), lay_out)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=120)
    assert proc.returncode == -9
    assert not target.exists()
    (stub,) = tmp_path.iterdir()  # hidden, and no part of the recording
    assert stub.name.startswith(".kill.nxs.") and stub.name.endswith(".creating")
    assert recording_parts(target) == [target] and not target.exists()

    from sbd_stream.formats.recording import _create_whole

    target.write_bytes(b"an earlier recording")
    with pytest.raises(FileExistsError):
        _create_whole(target, lambda f: f.attrs.__setitem__("acq", "x"))
    assert target.read_bytes() == b"an earlier recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == [stub.name, "kill.nxs"]
