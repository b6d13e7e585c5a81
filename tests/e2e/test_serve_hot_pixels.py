"""`sbd-stream serve` as a process, fed by a detector bridge (PUSH), with hot pixels in its frames.

An auditor's bridge sent a 0.45 counts/px frame holding one pixel at 65534 counts: the denoised mean came
back at 0.531 against 0.448 and the likelihood map trusted an invented column in vacuum, with no
``meta`` flag, no metric and no log line; only a pixel at exactly 65535 was replaced. Now a count the
configured dose makes impossible is replaced, counted, flagged and logged once per acquisition, and a
frame far brighter than the configured dose is counted as that instead of being mangled.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port, probe_through_service, service_metric, wait_until
from helpers_procs import kill_if_running, start_piped

from sbd_stream.formats.recording import open_recording
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, encode_frame, encode_series
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ACQ = "hot"


def _frames() -> list[np.ndarray]:
    """0.45 counts/px; a 500 and a 1000 count pixel; 4x the dose; 40x the dose (a wrong --counts-per-px)."""
    rng = np.random.default_rng(11)
    frames = [rng.poisson(lam, (64, 64)).astype(np.uint16) for lam in (0.45, 0.45, 0.45, 1.8, 18.0)]
    frames[1][20, 30] = 500
    frames[2][20, 30] = 1000
    return frames


@pytest.mark.timeout(180)
def test_serve_replaces_counts_flags_and_logs_hot_pixels(tmp_path: Path, tiny_engine_dir: Path) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 90_000)  # waits (bounded) until the service has connected
    push.setsockopt(zmq.LINGER, 0)
    port, out, metrics_port = push.bind_to_random_port("tcp://127.0.0.1"), free_port(ctx), free_port(ctx)
    cmd = [
        SBD, "serve", "--input", f"tcp://127.0.0.1:{port}", "--socket-type", "pull",
        "--output", f"tcp://127.0.0.1:{out}", "--record-dir", str(tmp_path), "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", str(metrics_port), "--policy", "lossless",
        "--pixel-size", "0.3", "--counts-per-px", "0.45",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0"}
    proc = start_piped(cmd, env=env)  # SIGHUP at its default (conftest.hup_default)
    col = Collector(f"tcp://127.0.0.1:{out}", context=ctx).start()
    frames = _frames()
    try:
        probe_through_service(push.send_multipart, col, timeout=120)  # the whole path is open
        push.send_multipart(encode_series(TOPIC_SERIES_START, ACQ, time.time()))
        for seq, arr in enumerate(frames):
            push.send_multipart(encode_frame(arr, ACQ, seq, time.time()))
        push.send_multipart(encode_series(TOPIC_SERIES_END, ACQ, time.time()))
        assert col.series_end.wait(90), "series_end never reached the subscriber"
        assert wait_until(lambda: service_metric(metrics_port, "sbd_frames_hot_total") == 2, 30)
        hot_pixels = service_metric(metrics_port, "sbd_pixels_hot_total")
        too_bright = service_metric(metrics_port, "sbd_frames_too_bright_total")
        saturated = service_metric(metrics_port, "sbd_frames_saturated_total")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc, drain=True)
        col.close()
        push.close(0)
    assert proc.returncode == 0, err[-3000:]
    assert (hot_pixels, too_bright, saturated) == (2, 1, 0)
    meta = {m.seq: m.header.meta for m in col.frames(b"denoised") if m.acq == ACQ}
    assert sorted(meta) == [0, 1, 2, 3, 4]
    assert meta[1]["hot_pixels"] == meta[2]["hot_pixels"] == 1
    assert not {"hot_pixels", "bright_pixels"} & (set(meta[0]) | set(meta[3]))  # 4x the dose: untouched
    assert meta[4]["bright_pixels"] == int(np.count_nonzero(frames[4] >= 27)) and "hot_pixels" not in meta[4]
    lines = [ln for ln in err.splitlines() if "sbd_stream.service.edge" in ln]
    hot = [ln for ln in lines if "hot pixel (>= 27 counts" in ln]
    assert len(hot) == 1 and f"acquisition {ACQ}, frame 1" in hot[0], lines  # once per acquisition
    assert len(lines) == 2 and "not hot pixels but a dose far from" in lines[1], lines
    with open_recording(tmp_path / f"{ACQ}.nxs") as f:  # the raw frames as the bridge sent them
        np.testing.assert_array_equal(f["raw/frames"][1], frames[1])
        assert f["raw/frames"][2][20, 30] == 1000
