"""`replay --publish` gives subscribers what the recording allows of the live run (audit h28, item 2).

The audit's subscriber saw every replayed frame with ``exposure_s 0.0`` (live: 0.025, the recording's
``count_time``), a ``series_start`` carrying the announcements inside ``meta`` and no top-level
``n_frames``, its ``ts`` the replay's wall clock (frames keep their recorded ``ts``: "time since
series_start" was -216 s), and a summary saying ``frames_missing 0`` over a recorded gap. Now frames carry
the recorded exposure, the series_start is shaped as the live one (``n_frames`` top-level, the producer's
``meta`` plus ``replay_of``) with the recorded series_start ``ts`` (parts written before it was recorded:
``t0``, the first frame's ``ts``), and the gap is counted. Per-frame ``meta`` and ``exposure_s`` are
recorded since session 31 and replayed (tests/integration/test_recording_frame_meta.py); parts written
before replay an empty ``meta`` (docs/service.md).

Everything real: the recording is written by the service's recorder (``RecorderSink`` -> ``Recorder``
thread, fed with messages decoded from wire bytes), replayed by an `sbd-stream replay --publish`
process, received by a ZeroMQ SUB socket on 127.0.0.1. No timing is asserted; each step waits on a
condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port, hup_default

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import open_recording
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, decode, encode_frame, encode_series
from sbd_stream.service.demo import Collector
from sbd_stream.service.sink import RecorderSink
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ACQ = "audit"
TS0 = 1_796_579_511.0  # the live series_start's ts, 1 s before its first frame
SEQS = [0, 1, 2, 3, 6, 7, 8, 9]  # 4 and 5 never arrived: a recorded gap of 2
META = {"detector": "K2", "op": "audit"}
ANNOUNCED = {"n_frames": 10, "exposure_s": 0.025, "shape": [64, 64], "dtype": "uint16"}


def _ts(seq: int) -> float:
    return TS0 + 1.0 + seq * 0.025


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.poisson(0.45, (64, 64)).astype(np.uint16) for _ in SEQS]


def _record_live(directory: Path) -> Path:
    """The live service's recording path: wire messages decoded, handed to the RecorderSink."""
    sink = RecorderSink(Recorder(RecordSettings(directory=directory, min_free_bytes=0), Metrics()))
    sink.start()
    start = {"v": 1, "acq": ACQ, "ts": TS0, "meta": META, **ANNOUNCED}
    sink.series_arrived(decode([TOPIC_SERIES_START, json.dumps(start).encode(), b""]))  # type: ignore[arg-type]
    for seq, frame in zip(SEQS, _frames(), strict=True):
        msg = decode(encode_frame(frame, ACQ, seq, _ts(seq), exposure_s=0.025, meta={"detector": "K2"}))
        sink.raw(Frame(msg.header, np.array(msg.data)))  # type: ignore[union-attr]
    end = decode(encode_series(TOPIC_SERIES_END, ACQ, _ts(9) + 0.025))
    sink.series_arrived(end)  # type: ignore[arg-type]
    sink.series_done(end)  # type: ignore[arg-type]
    sink.stop()
    sink.join(60)
    assert not sink.running()
    return directory / f"{ACQ}.nxs"


def _record_before(directory: Path) -> Path:
    """A part as recordings were written before this fix: ``series_meta`` alone (the announcements merged
    into the producer's meta), no ``series_start`` attribute, no recorded series_start ``ts``."""
    rec = Recorder(RecordSettings(directory=directory, min_free_bytes=0), Metrics())
    rec.write(RecordItem("series_start", ACQ, meta={**ANNOUNCED, **META}))
    for seq, frame in zip(SEQS, _frames(), strict=True):
        rec.write(RecordItem("raw", ACQ, seq, _ts(seq), frame))
    rec.close_all()
    return directory / f"{ACQ}.nxs"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("written", ["now", "before"])
def test_replay_publish_sends_the_recorded_series_and_counts_its_gap(
    tmp_path: Path, tiny_engine_dir: Path, written: str
) -> None:
    part = (_record_live if written == "now" else _record_before)(tmp_path / "rec")
    with open_recording(part) as f:
        t0 = float(f.attrs["t0"])
        has_start = "series_start" in f.attrs  # recorded now; absent in parts written before
    assert t0 == _ts(0)  # the first frame's ts: the series_start's own ts is not t0
    ctx = zmq.Context.instance()
    out = free_port(ctx)
    col = Collector(f"tcp://127.0.0.1:{out}", context=ctx).start()  # dials before replay binds
    cmd = [
        SBD, "replay", str(part), "--publish", "--output", f"tcp://127.0.0.1:{out}", "--wait", "5",
        "--model", str(tiny_engine_dir), "--engine", "onnxruntime",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=240, preexec_fn=hup_default
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert col.series_end.wait(60), proc.stderr[-3000:]
    finally:
        col.close()
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])

    starts = col.frames(TOPIC_SERIES_START)
    assert len(starts) == 1
    start = starts[0].header
    frames = col.frames(b"denoised")
    assert [r.seq for r in frames] == SEQS
    got = {
        # shaped as the live output's series_start: n_frames top-level, the producer's meta as meta
        "n_frames": start.n_frames,
        "meta": start.meta,
        # its ts: the recorded series_start's (older parts: t0, the first frame's), not the replay's clock
        "ts": start.ts,
        "exposure_s": sorted({r.header.exposure_s for r in frames}),  # the recorded exposure, not 0.0
        "ts_kept": all(r.header.ts == _ts(r.seq) for r in frames),
        "time_since_start_negative": any(r.header.ts < start.ts for r in frames),
        # per-frame meta: recorded now and replayed; parts written before: empty (plus the service's keys)
        "frame_meta_detector": any("detector" in r.header.meta for r in frames),
        # the recorded gap (seq 4-5) inside the replayed range is counted, as live
        "frames_missing": summary["frames_missing"],
        "frames_fed": summary["frames_fed"],
        "gap_logged": "2 frames of audit between seq 0 and 9 are not in the recording" in proc.stderr,
        "series_start_recorded": has_start,  # recorded now; absent in parts written before
    }
    assert got == {
        "n_frames": 10,
        "meta": {**META, "replay_of": str(part)},
        "ts": TS0 if written == "now" else t0,
        "exposure_s": [0.025],
        "ts_kept": True,
        "time_since_start_negative": False,
        "frame_meta_detector": written == "now",
        "frames_missing": 2,
        "frames_fed": len(SEQS),
        "gap_logged": True,
        "series_start_recorded": written == "now",
    }
