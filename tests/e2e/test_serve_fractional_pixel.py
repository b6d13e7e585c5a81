"""`sbd-stream serve --pixel-size 0.1` on an engine working at 0.24 A serves frames instead of refusing.

Before, 0.24 / 0.1 = 2.4 has no integer bin within 5 % and the service exited at start with
``SamplingError`` ("does not divide"). Now it resamples by area (factor 2.4), says so once, publishes
denoised frames at the detector's shape and dose, and reports the factor as ``sbd_bin_factor``.
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
from conftest import free_port, probe_through_service, service_metric
from helpers_procs import kill_if_running, start_piped

from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, encode_frame, encode_series
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ACQ = "fractional"


@pytest.mark.timeout(180)
def test_serve_resamples_a_detector_pixel_with_no_integer_bin(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 90_000)
    push.setsockopt(zmq.LINGER, 0)
    port, out, metrics_port = push.bind_to_random_port("tcp://127.0.0.1"), free_port(ctx), free_port(ctx)
    cmd = [
        SBD, "serve", "--input", f"tcp://127.0.0.1:{port}", "--socket-type", "pull",
        "--output", f"tcp://127.0.0.1:{out}", "--record-dir", str(tmp_path),
        "--model", str(binning_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", str(metrics_port), "--policy", "lossless",
        "--pixel-size", "0.1", "--counts-per-px", "1.25",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0"}
    proc = start_piped(cmd, env=env)  # SIGHUP at its default (conftest.hup_default)
    col = Collector(f"tcp://127.0.0.1:{out}", context=ctx).start()
    rng = np.random.default_rng(5)
    frames = [rng.poisson(1.25, (97, 130)).astype(np.uint16) for _ in range(3)]  # 41 x 55 working pixels
    try:
        probe_through_service(push.send_multipart, col, timeout=120)
        push.send_multipart(encode_series(TOPIC_SERIES_START, ACQ, time.time()))
        for seq, arr in enumerate(frames):
            push.send_multipart(encode_frame(arr, ACQ, seq, time.time()))
        push.send_multipart(encode_series(TOPIC_SERIES_END, ACQ, time.time()))
        assert col.series_end.wait(90), "series_end never reached the subscriber"
        bin_factor = service_metric(metrics_port, "sbd_bin_factor")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc, drain=True)
        col.close()
        push.close(0)
    assert proc.returncode == 0, err[-3000:]
    assert bin_factor == pytest.approx(2.4)
    got = {m.seq: m for m in col.frames(b"denoised") if m.acq == ACQ}
    assert sorted(got) == [0, 1, 2]
    for m in got.values():
        assert m.data is not None and m.data.shape == (97, 130) and np.isfinite(m.data).all()
        assert not m.header.meta.get("blank")  # the dose check used r^2: 1.25 x 5.76 = 7.2 per working px
    said = [ln for ln in err.splitlines() if "area-weighted resampling by 2.4" in ln]
    assert len(said) == 1 and "0.1 A" in said[0] and "no integer bin within 5 %" in said[0], said  # once
