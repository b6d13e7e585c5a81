"""Several engine workers in one service, on loopback with real sockets, HDF5 and the tiny engine.

Two workers with different speeds make batches finish out of order on purpose; consumers must still
see every frame once and in order, and a batch that raises on one worker must be counted, named and
skipped without holding up the rest.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import make_settings, stream_through, wait_until
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import open_recording
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.build import build_pipeline, load_stages
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration

N_FRAMES = 48


class PacedStage(BatchStage):
    """The real batch stage, slowed down by a fixed delay, and optionally failing on one frame."""

    def __init__(self, denoiser: Denoiser, settings, delay_s: float, log: list, fail_seq: int | None = None):
        d = settings.denoise
        super().__init__(denoiser, settings.detector, d.likelihood, d.bin_tolerance, d.upsample)
        self.delay_s, self.log, self.fail_seq = delay_s, log, fail_seq
        self.failed: list[int] = []

    def process(self, frames: Sequence[Frame]) -> BatchResult:
        seqs = [f.header.seq for f in frames]
        time.sleep(self.delay_s)
        if self.fail_seq is not None and self.fail_seq in seqs:
            self.failed.extend(seqs)
            raise RuntimeError(f"engine fault on frame {self.fail_seq}")
        res = super().process(frames)
        self.log.append(seqs[0])  # completion order, by the batch's first frame
        return res


def _engines(tiny_engine_dir: Path) -> list[Denoiser]:
    """Two separate engine instances (a worker never shares its engine), one CPU thread each."""
    return [Denoiser.load("onnxruntime", tiny_engine_dir, "cpu", threads=1) for _ in range(2)]


def _settings(tmp_path: Path, emu: Emulator, **denoise):
    s = make_settings(tmp_path, emu.endpoint, batch_frames=2, workers=2, **denoise)
    s.publish.sndhwm = s.publish.queue_frames = 100_000  # every message is counted: no slow-reader drops
    return s


def _emulator(ctx: zmq.Context) -> Emulator:
    cfg = EmulatorSettings(
        endpoint="tcp://127.0.0.1:*", shape=(64, 64), n_frames=N_FRAMES, rate_hz=400, keep_truth=True
    )
    return Emulator(cfg, ctx)


@pytest.mark.timeout(120)
def test_two_workers_deliver_every_frame_once_and_in_order(tmp_path: Path, tiny_engine_dir: Path) -> None:
    ctx = zmq.Context.instance()
    emu = _emulator(ctx)
    s = _settings(tmp_path, emu, likelihood={"enabled": True})
    done: list[int] = []
    fast, slow = _engines(tiny_engine_dir)
    stages = [PacedStage(slow, s, 0.05, done), PacedStage(fast, s, 0.0, done)]
    pipe = build_pipeline(s, stages, context=ctx)
    col = stream_through(pipe, emu, ctx)
    m = pipe.metrics
    den, llr = col.frames(b"denoised"), col.frames(b"llr")
    assert [r.seq for r in den] == list(range(N_FRAMES))
    assert [r.seq for r in llr] == list(range(N_FRAMES))
    assert col.messages[0].topic == b"series_start" and col.messages[-1].topic == b"series_end"
    assert done != sorted(done), "the workers never finished out of order: reordering was not exercised"
    per_worker = [m.value("sbd_worker_frames_total", {"worker": w}) for w in ("0", "1")]
    assert sum(per_worker) == N_FRAMES and min(per_worker) > 0, per_worker
    assert m.value("sbd_workers") == 2 and m.value("sbd_frames_denoised_total") == N_FRAMES
    assert m.value("sbd_worker_busy_seconds_total", {"worker": "0"}) > 0
    with open_recording(tmp_path / "rec" / f"{emu.cfg.acq}.nxs") as f:
        np.testing.assert_array_equal(f["raw/seq"][:], np.arange(N_FRAMES))
        np.testing.assert_array_equal(f["denoised/seq"][:], np.arange(N_FRAMES))
        f16 = np.stack([r.data for r in den]).astype(np.float16)  # record.denoised_dtype
        np.testing.assert_array_equal(f["denoised/frames"][:], f16)
    # whichever worker denoised a frame, it is the engine applied to exactly that frame (no cross-talk)
    ref = BatchStage(fast, s.detector, s.denoise.likelihood)
    for r in den[::5]:
        one = ref.process([Frame(r.header, emu.sent[r.seq])])
        np.testing.assert_allclose(r.data, one.denoised[0], rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
def test_a_worker_raising_on_one_batch_is_counted_and_the_service_goes_on(
    tmp_path: Path, tiny_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = zmq.Context.instance()
    emu = _emulator(ctx)
    s = _settings(tmp_path, emu)
    done: list[int] = []
    a, b = _engines(tiny_engine_dir)
    stages = [PacedStage(a, s, 0.01, done, fail_seq=13), PacedStage(b, s, 0.01, done, fail_seq=13)]
    pipe = build_pipeline(s, stages, context=ctx)
    with caplog.at_level(logging.ERROR, logger="sbd_stream"):
        col = stream_through(pipe, emu, ctx)
    failed = sorted(stages[0].failed + stages[1].failed)
    assert 13 in failed and 1 <= len(failed) <= 2
    m = pipe.metrics
    assert m.value("sbd_denoise_errors_total") == 1
    assert m.value("sbd_frames_failed_total") == len(failed)
    errs = [m.value("sbd_worker_errors_total", {"worker": w}) for w in ("0", "1")]
    assert sum(errs) == 1
    # every other frame is delivered, in order, and the series end still comes last
    assert [r.seq for r in col.frames(b"denoised")] == [q for q in range(N_FRAMES) if q not in failed]
    assert col.messages[-1].topic == b"series_end"
    # the failed frames are named in the log, and their raw frames are recorded all the same
    text = caplog.text
    assert "not denoised" in text and f"{emu.cfg.acq}#13" in text
    with open_recording(tmp_path / "rec" / f"{emu.cfg.acq}.nxs") as f:
        np.testing.assert_array_equal(f["raw/seq"][:], np.arange(N_FRAMES))
    health = pipe.health()
    assert {"denoise", "denoise-1"} <= set(health["stages"])


@pytest.mark.timeout(120)
def test_workers_from_settings_split_the_cpu_and_show_on_metrics(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """``denoise.workers = 2`` on a CPU: two engines with half the cores each, exported per worker."""
    s = make_settings(
        tmp_path, "tcp://127.0.0.1:1", workers=2, engine="onnxruntime", model=str(tiny_engine_dir)
    )
    stages = load_stages(s)
    assert len(stages) == 2 and stages[0].denoiser.engine is not stages[1].denoiser.engine
    pipe = build_pipeline(s, stages, source=None)
    pipe.start()
    url = f"http://127.0.0.1:{pipe.metrics_port}"
    try:
        rng = np.random.default_rng(0)
        for q in range(8):
            data = rng.poisson(0.45, size=(64, 64)).astype(np.uint16)
            pipe.handle_frame(Frame(FrameHeader("w", q, 0.0, (64, 64), "uint16"), data))
        assert wait_until(lambda: pipe.metrics.value("sbd_frames_denoised_total") == 8)
        body = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        res = CliRunner().invoke(app, ["info", "--service", url, "--interval", "0.2"])
    finally:
        pipe.stop()
    assert 'sbd_worker_frames_total{worker="1"}' in body and "sbd_workers 2.0" in body
    info = [line for line in body.splitlines() if line.startswith("sbd_worker_info{")]
    assert len(info) == 2 and all('device="cpu"' in line for line in info)
    # `sbd-stream info --service` reads the same counters back, per worker
    assert res.exit_code == 0, res.output
    workers = json.loads(res.output)["service"]["workers"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert sum(w["frames_total"] for w in workers) == 8 and all(w["device"] == "cpu" for w in workers)
    assert all(0.0 <= w["load"] <= 1.0 for w in workers)
