"""`emulate --source RECORDING` sends each frame's recorded ``exposure_s`` and producer ``meta``.

Why: since session 31 a recording keeps them (formats/frame_meta.py) and `replay` sends them, but the
emulator re-sent the counts with its own frame period and ``{"dose": ...}`` only, and only the rows of
the file given, not of its rolled parts: a facility engineer playing yesterday's session into a test
service lost the stage temperature, tilt... every frame came with. Real HDF5 recordings written by the
recorder, the real command, a SUB on loopback reading what it sends.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from sbd_stream.cli.app import app
from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import recording_parts
from sbd_stream.frames import Frame, own_keys_renamed
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    MAX_HEADER_BYTES,
    TOPIC_SERIES_END,
    FrameMessage,
    SeriesMessage,
    decode,
    encode_frame,
    encode_series,
)
from sbd_stream.service.sink import RecorderSink
from sbd_stream.sinks.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ACQ = "insitu"
N = 8
SHAPE = (32, 32)
NOMINAL_EXPOSURE = 0.025  # what emulate --rate 0 states when the recording says nothing


def _meta(q: int) -> dict:
    """An in-situ producer's meta: every third frame none; frame 1 a key the service sets itself
    (recorded as ``meta.blank``); frame 2 its own ``dose``, which the emulator's must not overwrite."""
    if q % 3 == 0:
        return {}
    meta = {"stage_temperature_K": 300.0 + 0.5 * q, "tilt_deg": [q, -q], "note": f"ramp \u2603 {q}"}
    if q == 1:
        meta["blank"] = True
    if q == 2:
        meta["dose"] = 7.5
    return meta


def _exposure(q: int) -> float:
    return 0.01 + 0.001 * q


def _record(directory: Path, n: int, meta=_meta, roll_bytes: int = 12_000) -> Path:
    """Raw frames (frame q full of q) as the service records them: wire bytes decoded, a clashing key
    renamed as its input does (``own_keys_renamed``), handed to the ``RecorderSink``, rolling to a new
    part past ``roll_bytes``."""
    rs = RecordSettings(directory=directory, min_free_bytes=0, max_file_bytes=roll_bytes)
    sink = RecorderSink(Recorder(rs, Metrics()))
    sink.start()
    for q in range(n):
        frame = np.full(SHAPE, q, np.uint16)
        m = own_keys_renamed(meta(q)) or meta(q)
        msg = decode(encode_frame(frame, ACQ, q, 1.7e9 + q, exposure_s=_exposure(q), meta=m))
        sink.raw(Frame(msg.header, np.array(msg.data)))  # type: ignore[union-attr]
    sink.series_done(decode(encode_series(TOPIC_SERIES_END, ACQ, 1.8e9)))  # type: ignore[arg-type]
    sink.stop()
    sink.join(30)
    return directory / f"{ACQ}.nxs"


def _emulate(src: Path, *flags: str) -> tuple[int, str, list]:
    """Run `emulate --source src` into a SUB bound on loopback; its exit code, output and messages."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.linger = 0
    sub.bind("tcp://127.0.0.1:*")
    got: list = []

    def receive() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (got and got[-1].topic == b"series_end"):
            if sub.poll(100):
                got.append(decode(sub.recv_multipart()))

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    try:
        ep = sub.getsockopt_string(zmq.LAST_ENDPOINT)
        args = ["emulate", "--source", str(src), "--endpoint", ep, "--connect", "--rate", "0", *flags]
        res = CliRunner().invoke(app, args)
        t.join(60)
    finally:
        sub.close()
    return res.exit_code, res.output, got


def _frames(got: list) -> list[FrameMessage]:
    assert isinstance(got[0], SeriesMessage) and got[-1].topic == b"series_end", got[:1]
    return [m for m in got if isinstance(m, FrameMessage)]


def test_recorded_meta_and_exposure_are_sent_across_part_rolls_and_the_loop(tmp_path: Path) -> None:
    """Each frame as the detector sent it: its recorded exposure and meta (``meta.blank`` as recorded,
    the producer's ``dose`` kept), through the recording's parts and round again (11 frames of 8); the
    emulator's ``dose`` only where the recorded meta has none."""
    src = _record(tmp_path, N)
    assert len(recording_parts(src)) >= 2  # rolled
    code, out, got = _emulate(src, "--frames", "11")
    assert code == 0, out
    frames = _frames(got)
    dose = got[0].header.meta["counts_per_px"]
    assert [f.header.seq for f in frames] == list(range(11))
    assert [int(f.data[0, 0]) for f in frames] == [k % N for k in range(11)]  # every part, then again
    assert [f.header.exposure_s for f in frames] == [_exposure(k % N) for k in range(11)]
    want = [{"dose": dose, **(own_keys_renamed(_meta(k % N)) or _meta(k % N))} for k in range(11)]
    assert [f.header.meta for f in frames] == want
    assert frames[1].header.meta["meta.blank"] is True and "blank" not in frames[1].header.meta
    assert frames[2].header.meta["dose"] == 7.5 and frames[10].header.meta["dose"] == 7.5


def test_a_recording_made_before_frame_meta_plays_as_before_through_its_parts(tmp_path: Path) -> None:
    """Parts without ``raw/meta`` / ``raw/exposure_s`` (session 30's layout): the emulator's own
    ``{"dose": ...}`` and exposure, as before; the frames of every part are still sent."""
    src = _record(tmp_path, N)
    parts = recording_parts(src)
    assert len(parts) >= 2
    for part in parts:
        with h5py.File(part, "r+") as f:
            for name in ("meta", "meta_start", "meta_length", "exposure_s"):
                if name in f["entry/raw"]:
                    del f[f"entry/raw/{name}"]
    code, out, got = _emulate(src, "--frames", str(N))
    assert code == 0, out
    frames = _frames(got)
    dose = got[0].header.meta["counts_per_px"]
    assert [int(f.data[0, 0]) for f in frames] == list(range(N))
    assert [(f.header.exposure_s, f.header.meta) for f in frames] == [(NOMINAL_EXPOSURE, {"dose": dose})] * N


def _header_bytes(meta: dict) -> int:
    zeros = np.zeros(SHAPE, np.uint16)
    return len(encode_frame(zeros, ACQ, 1, 1.7e9 + 1, exposure_s=_exposure(1), meta=meta)[1])


def test_a_recorded_meta_near_the_64_kib_header_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A recorded header 8 bytes under the wire's limit: sent whole, the emulator's ``dose`` left out
    (it would pass the limit); with an ``--acq`` 40 characters longer than the recorded one it cannot fit
    at all: replaced by ``recorded_meta_dropped`` and said once at WARNING, not a traceback mid-stream."""
    big = {"spectrum": [round(0.001 * i, 3) for i in range(9000)]}
    big["pad"] = "x" * (MAX_HEADER_BYTES - 8 - _header_bytes(big) - len(',"pad":""'))
    assert _header_bytes(big) == MAX_HEADER_BYTES - 8
    metas = {0: {"T": 1}, 1: big, 2: {"T": 3}}
    src = _record(tmp_path, 3, meta=metas.__getitem__, roll_bytes=10**9)
    code, out, got = _emulate(src, "--frames", "3", "--acq", ACQ)
    assert code == 0, out
    dose = got[0].header.meta["counts_per_px"]
    assert [f.header.meta for f in _frames(got)] == [{"dose": dose, "T": 1}, big, {"dose": dose, "T": 3}]
    with caplog.at_level(logging.WARNING):
        code, out, got = _emulate(src, "--frames", "6", "--acq", ACQ + "-" + "x" * 39)
    assert code == 0, out
    metas_sent = [f.header.meta for f in _frames(got)]
    assert len(metas_sent) == 6 and metas_sent[0] == metas_sent[3] == {"dose": dose, "T": 1}
    assert metas_sent[1] == metas_sent[4] and set(metas_sent[1]) == {"dose", "recorded_meta_dropped"}
    assert caplog.text.count("recorded row 1: its meta does not fit a 64 KiB header") == 1
