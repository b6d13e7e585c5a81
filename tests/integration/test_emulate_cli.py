"""`sbd-stream emulate`: a recording is re-sent as recorded and announced as such; bad flags are one line."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from sbd_stream.cli.app import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameMessage, SeriesMessage, decode
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.emulator import Emulator, EmulatorSettings, FrameSource
from sbd_stream.sources.emulator_recording import for_recording

pytestmark = pytest.mark.integration

SAMPLING = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}


def _recording(folder: Path, top: int = 5, shape: tuple[int, int] = (24, 32)) -> Path:
    """A recording of 4 raw uint16 frames, counts up to ``top``, at the paper's sampling."""
    rec = Recorder(RecordSettings(directory=folder, min_free_bytes=0), Metrics(), sampling=SAMPLING)
    for q in range(4):
        frame = np.full(shape, q, np.uint16)
        frame[0, 0] = top
        rec.write(RecordItem("raw", "r", q, 0.0, frame))
    rec.close_all()
    return folder / "r.nxs"


def _emulate(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["emulate", *args])
    return res.exit_code, res.output


def test_recording_is_resent_and_announced_as_recorded(tmp_path: Path) -> None:
    """Shape, dtype and sampling in the banner and series_start are the recording's, not the defaults
    (1024 x 1024) or the flags; rate 0 is "as fast as possible", stated as such."""
    src = _recording(tmp_path)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.linger = 0
    sub.bind("tcp://127.0.0.1:*")
    got: list = []

    def receive() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end and not (got and got[-1].topic == b"series_end"):
            if sub.poll(100):
                got.append(decode(sub.recv_multipart()))

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    try:
        ep = sub.getsockopt_string(zmq.LAST_ENDPOINT)
        code, out = _emulate(
            "--source", str(src), "--endpoint", ep, "--connect", "--rate", "0", "--frames", "3"
        )
        t.join(30)
    finally:
        sub.close()
    assert code == 0, out
    assert "emulating 24x32 uint16 as fast as possible (exposure 0.025 s) from recording images" in out
    assert "(0.06 A pixels, 0.45 counts/px = 125 e/A^2, as recorded)" in out
    start = got[0]
    assert isinstance(start, SeriesMessage) and start.topic == b"series_start"
    assert start.header.shape == (24, 32) and start.header.dtype == "uint16" and start.header.n_frames == 3
    meta = start.header.meta
    assert meta["source"] == "recording" and meta["pixel_size_A"] == pytest.approx(0.06)
    assert meta["counts_per_px"] == pytest.approx(0.45) and meta["dose_e_per_A2"] == pytest.approx(125.0)
    frames = [m for m in got if isinstance(m, FrameMessage)]
    assert [f.data.shape for f in frames] == [(24, 32)] * 3 and frames[2].data[1, 1] == 2


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--shape", "1024x1024"], "--shape 1024x1024: r.nxs holds 24x32 frames"),
        (["--pixel-size", "0.1"], "--pixel-size 0.1: r.nxs was recorded at 0.06 A pixels"),
        (["--counts-per-px", "1.25"], "--counts-per-px 1.25: r.nxs was recorded at 0.45 counts/px"),
        (["--dose", "200"], "--dose 200: r.nxs was recorded at 125 e/A^2"),
        (["--rate", "-1"], "--rate must be a number of frames per second >= 0"),
    ],
)
def test_flags_contradicting_a_recording_are_refused_in_one_line(
    tmp_path: Path, flags: list[str], reason: str
) -> None:
    code, out = _emulate("--source", str(_recording(tmp_path)), "--endpoint", "tcp://127.0.0.1:*", *flags)
    assert code == 2 and out.startswith(f"error: {reason}") and out.count("\n") == 1, out


def test_uint8_is_refused_for_counts_it_would_wrap_and_kept_exact_otherwise(tmp_path: Path) -> None:
    """``astype(uint8)`` turned a count of 300 into 44; now a lossless re-encoding or a refusal."""
    big = _recording(tmp_path / "big", top=300)
    code, out = _emulate("--source", str(big), "--dtype", "uint8", "--endpoint", "tcp://127.0.0.1:*")
    assert code == 2 and "holds counts from 0 to 300; uint8 would wrap" in out and out.count("\n") == 1, out
    small = _recording(tmp_path / "small", top=255)
    src = FrameSource(EmulatorSettings(source=small, dtype="uint8"))
    first = next(src.frames())[0]
    assert first.dtype == np.uint8 and first[0, 0] == 255 and src.shape == (24, 32)


def test_flags_that_agree_with_the_recording_or_fill_what_it_omits_are_taken(tmp_path: Path) -> None:
    cfg = EmulatorSettings(source=_recording(tmp_path), shape=(24, 32), pixel_size_A=0.06)
    same, note = for_recording(cfg, shape_given=True, pixel_size_A=0.06, dose_e_per_A2=125.0)
    assert same.shape == (24, 32) and same.dose == pytest.approx(0.45) and note == "as recorded"
    with pytest.raises(ValueError, match="--shape 1024x1024"):
        for_recording(cfg.model_copy(update={"shape": (1024, 1024)}), shape_given=True)
    # a recording that states no sampling: the flags (or defaults) fill it in, and the note says so
    bare = tmp_path / "bare"
    rec = Recorder(RecordSettings(directory=bare, min_free_bytes=0), Metrics())
    rec.write(RecordItem("raw", "r", 0, 0.0, np.ones((8, 8), np.uint8)))
    rec.close_all()
    filled, note = for_recording(EmulatorSettings(source=bare / "r.nxs", dtype="uint16"), pixel_size_A=0.1)
    assert filled.pixel_size_A == 0.1 and filled.dtype == "uint8" and filled.shape == (8, 8)
    assert note == "pixel size and dose not stated by the recording: flag or default"


def test_push_without_a_peer_says_no_peer_connected(caplog: pytest.LogCaptureFixture) -> None:
    cfg = EmulatorSettings(
        endpoint="tcp://127.0.0.1:*", shape=(8, 8), n_frames=1, push=True, wait_subscriber_s=0.2
    )
    emu = Emulator(cfg)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sources.emulator"):
        emu.start()
        end = time.monotonic() + 10
        while time.monotonic() < end and "connected after" not in caplog.text:
            time.sleep(0.05)
        emu.close()
    assert "no peer (PULL) connected after 0.2 s" in caplog.text and "subscriber" not in caplog.text
