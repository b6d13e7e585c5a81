"""`--evidence-frames N`: a frame's likelihood map does not depend on timing, batching, lane or workers.

Audit 23 (equivalence, defect 2): the same 8 frames sent to `serve --likelihood --evidence-frames 4`
paced (one at a time), as a burst (live lane skipping, complete lane finishing) and with `--no-live
--batch 4 --workers 2` gave LLR maps of the same `seq` differing by up to 2.5x, and a `replay` of the
paced recording did not reproduce its maps: a frame was scored on whatever frames its batch and the
live lane happened to hold, later batch-mates included. The recording did not say how many frames
scored each row. Now frame `seq` is scored on the frames `seq - N ... seq - 1` received before it, on
every path, and `/entry/llr/evidence_frames` records how many.

Everything real: `sbd-stream serve` and `replay` processes, ZeroMQ PUSH -> PULL on 127.0.0.1,
recordings read back with h5py. No timing is asserted; each step waits on a condition.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port, hup_default, service_metric, wait_until
from helpers_procs import kill_if_running

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.card import default_engine_root, live_engine
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import open_recording
from sbd_stream.frames import Frame
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, FrameHeader, encode_frame, encode_series
from sbd_stream.service.batch import BatchStage

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
N = 4  # --evidence-frames
FRAMES = 12
SHAPE = (256, 256)  # 0.060 A detector pixels: 64 x 64 working pixels on the live CPU engine (0.24 A)
SAMPLING = ["--pixel-size", "0.060", "--counts-per-px", "0.45"]


def _scene_frames() -> np.ndarray:
    """A static lattice of columns (2.9 A apart) over the 0.45-count vacuum, Poisson counts, uint16."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    rate = np.full(SHAPE, 0.45)
    for cy in range(24, SHAPE[0], 48):
        for cx in range(24, SHAPE[1], 48):
            rate += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
    rng = np.random.default_rng(23)
    return rng.poisson(rate, size=(FRAMES, *SHAPE)).astype(np.uint16)


@pytest.fixture(scope="module")
def engine_dir() -> Path:
    """The shipped live CPU engine (``sbd-stream info``): it finds the lattice's columns; the tiny
    random test engines find none, and maps of zeros would compare equal whatever scored them."""
    return default_engine_root() / live_engine("cpu")


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` with its output in ``log`` (a file: a pipe read only at the end can fill and stall it)."""
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0"}
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=hup_default)


def _finish(proc: subprocess.Popen, log: Path, sig: int | None = signal.SIGTERM) -> None:
    if sig is not None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _serve(
    ctx: zmq.Context,
    engine_dir: Path,
    rec: Path,
    sends: list[tuple[str, bool]],
    frames: np.ndarray,
    *extra: str,
) -> None:
    """One `serve` process; for each (acq, paced) the frames as one series, paced (each waits until the
    one before is denoised) or as a burst; then SIGTERM (the complete lane finishes before it exits)."""
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDTIMEO, 120_000)  # a service that never connects fails the test, not hangs it
    port = push.bind_to_random_port("tcp://127.0.0.1")
    metrics = free_port(ctx)
    cmd = [
        SBD, "serve", "--input", f"tcp://127.0.0.1:{port}", "--socket-type", "pull", "--connect-input",
        "--output", f"tcp://127.0.0.1:{free_port(ctx)}", "--metrics-port", str(metrics),
        "--record-dir", str(rec), "--model", str(engine_dir), "--engine", "onnxruntime",
        "--likelihood", "--evidence-frames", str(N), *SAMPLING, *extra,
    ]  # fmt: skip
    log = rec.with_suffix(".log")
    proc = _popen(cmd, log)
    try:
        sent = 0
        for acq, paced in sends:
            push.send_multipart(encode_series(TOPIC_SERIES_START, acq, time.time()))  # waits for the peer
            for i, fr in enumerate(frames):
                push.send_multipart(encode_frame(fr, acq, i, 1000.0 + i))
                sent += 1
                if paced:  # every frame sent so far is denoised before the next goes
                    assert wait_until(
                        lambda n=sent: (service_metric(metrics, "sbd_frames_denoised_total") or 0) >= n, 60
                    ), f"frame {i} of {acq} never denoised"
            push.send_multipart(encode_series(TOPIC_SERIES_END, acq, time.time()))
        total = len(sends) * len(frames)
        assert wait_until(lambda: service_metric(metrics, "sbd_frames_received_total") == total, 60)
        _finish(proc, log)
    finally:
        kill_if_running(proc)
        push.close(0)


def _llr(path: Path) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """The recording's LLR map and evidence count per seq (each seq once)."""
    with open_recording(path) as f:
        g = f["entry/llr"]
        seq = g["seq"][:].tolist()
        assert sorted(seq) == list(range(FRAMES)), seq
        maps = {q: g["frames"][i] for i, q in enumerate(seq)}
        used = dict(zip(seq, g["evidence_frames"][:].tolist(), strict=True))
    return maps, used


@pytest.mark.slow  # three service processes: ~40 s on 2 busy cores
@pytest.mark.timeout(400)
def test_llr_maps_are_the_same_paced_burst_batched_and_replayed(tmp_path: Path, engine_dir: Path) -> None:
    ctx = zmq.Context.instance()
    frames = _scene_frames()
    live, batched, replayed = tmp_path / "live", tmp_path / "batched", tmp_path / "replayed"
    # paced, then the same frames as a burst (live lane: newest first, the rest completed later)
    _serve(ctx, engine_dir, live, [("paced", True), ("burst", False)], frames)
    # one lane, batches of 4 over two workers
    _serve(
        ctx,
        engine_dir,
        batched,
        [("batched", False)],
        frames,
        "--no-live",
        "--batch",
        "4",
        "--workers",
        "2",
    )
    # the paced recording through the service again (one lane, batches of 4)
    replay = [
        SBD, "replay", str(live / "paced.nxs"), "--record-dir", str(replayed),
        "--model", str(engine_dir), "--engine", "onnxruntime",
        "--likelihood", "--evidence-frames", str(N), "--batch", "4",
    ]  # fmt: skip
    _finish(_popen(replay, tmp_path / "replay.log"), tmp_path / "replay.log", None)

    paced, used = _llr(live / "paced.nxs")
    assert used == {q: min(q, N) for q in range(FRAMES)}  # the N before it; fewer at the series' start
    assert any(np.abs(m).max() > 0 for m in paced.values()), "no column scored: the comparison says nothing"
    for name, path in [("burst", live / "burst.nxs"), ("batched", batched / "batched.nxs")]:
        maps, n = _llr(path)
        assert n == used, name
        for q in range(FRAMES):
            np.testing.assert_allclose(maps[q], paced[q], rtol=1e-5, atol=1e-4, err_msg=f"{name} seq {q}")
    maps, n = _llr(replayed / "paced.nxs")
    assert n == used
    for q in range(FRAMES):
        np.testing.assert_allclose(maps[q], paced[q], rtol=1e-5, atol=1e-4, err_msg=f"replay seq {q}")

    # and they are the maps of the Python API given the N frames before each
    stage = BatchStage(
        Denoiser.load("onnxruntime", engine_dir, device="cpu"),
        DetectorSettings(pixel_size_A=0.060, counts_per_px=0.45),
        LikelihoodSettings(enabled=True, evidence_frames=N),
    )
    fr = [Frame(FrameHeader("paced", i, 1000.0 + i, SHAPE, "uint16"), frames[i]) for i in range(FRAMES)]
    for q in (1, N + 2):
        res = stage.process([fr[q]], earlier=fr[max(0, q - N) : q])
        assert res.evidence_frames is not None and int(res.evidence_frames[0]) == min(q, N)
        assert res.likelihood is not None
        np.testing.assert_allclose(res.likelihood[0], paced[q], rtol=1e-5, atol=1e-4, err_msg=f"API seq {q}")
