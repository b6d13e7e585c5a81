"""A ``series_start`` ``meta`` key named like an announcement no longer replaces it in the recording.

Audit h28, item 5: a ``series_start`` announcing ``n_frames: 120`` with ``meta {"n_frames": "from-meta"}``
was recorded as ``series_meta`` / NeXus ``series_metadata`` ``{"n_frames": "from-meta", ...}``: the
announcement was gone, and a reader of ``series_metadata["n_frames"]`` got a string. Detector metadata
often carries a ``shape`` or ``dtype`` of something else. Now the flat view keeps the announcements and
holds a colliding ``meta`` key as ``meta.<key>``, and the part's ``series_start`` attribute keeps the
message's ``ts``, announcements and ``meta`` apart, as sent (formats/series_record.py).

Everything real: an `sbd-stream serve` process fed over ZeroMQ PUSH -> PULL on 127.0.0.1, the part it
writes read back with h5py. No timing is asserted; each step waits on a condition.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port, hup_default, service_metric, wait_until
from helpers_procs import kill_if_running

from sbd_stream.formats.recording import open_recording
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, encode_frame, encode_series

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ACQ = "collide"
TS0 = 1_796_000_000.0  # the series_start's own ts, 1 s before its first frame
META = {"n_frames": "from-meta", "shape": "4096x4096 sensor", "exposure_s": "auto", "detector": "K2"}
START = {"v": 1, "acq": ACQ, "ts": TS0, "n_frames": 3, "exposure_s": 0.025, "shape": [64, 64]}
START["dtype"] = "uint16"


@pytest.mark.timeout(300)
def test_an_announcement_wins_and_a_colliding_meta_key_is_kept(tmp_path: Path, tiny_engine_dir: Path) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 120_000)  # waits (bounded) until the service has connected
    push.setsockopt(zmq.LINGER, 5000)
    port, out, metrics_port = push.bind_to_random_port("tcp://127.0.0.1"), free_port(ctx), free_port(ctx)
    rec = tmp_path / "rec"
    cmd = [
        SBD, "serve", "--input", f"tcp://127.0.0.1:{port}", "--socket-type", "pull",
        "--output", f"tcp://127.0.0.1:{out}", "--record-dir", str(rec), "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", str(metrics_port), "--policy", "lossless",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0"}
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, preexec_fn=hup_default)
    try:
        push.send_multipart([TOPIC_SERIES_START, json.dumps({**START, "meta": META}).encode(), b""])
        rng = np.random.default_rng(5)
        for seq in range(3):
            frame = rng.poisson(0.45, (64, 64)).astype(np.uint16)
            push.send_multipart(encode_frame(frame, ACQ, seq, TS0 + 1 + seq * 0.025, exposure_s=0.025))
        push.send_multipart(encode_series(TOPIC_SERIES_END, ACQ, TS0 + 2))
        received = lambda: service_metric(metrics_port, "sbd_frames_received_total")  # noqa: E731
        assert wait_until(lambda: received() == 3, 120), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # the recorder writes what is queued, then closes the part
        proc.wait(timeout=120)
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        kill_if_running(proc)
        push.close(0)

    with open_recording(rec / f"{ACQ}.nxs") as f:
        flat = json.loads(f.attrs["series_meta"])
        nexus_flat = json.loads(f["entry/instrument/detector/series_metadata"][()])
        start = json.loads(f.attrs.get("series_start", "null"))  # read last: the flat view comes first
        count_time = f.get("entry/instrument/detector/count_time")  # from the announced exposure_s
        count_time = None if count_time is None else float(count_time[()])
        assert len(f["entry/raw/complete"]) == 3
    # the flat view: the announcements win, each colliding meta key is kept under a clear name
    assert flat == {
        "exposure_s": 0.025, "n_frames": 3, "shape": [64, 64], "dtype": "uint16", "detector": "K2",
        "meta.n_frames": "from-meta", "meta.shape": "4096x4096 sensor", "meta.exposure_s": "auto",
    }  # fmt: skip
    assert nexus_flat == flat and count_time == 0.025
    # the message itself, apart and lossless: what replay sends again
    assert start == {**{k: v for k, v in START.items() if k not in ("v", "acq")}, "meta": META}
