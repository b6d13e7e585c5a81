"""Stages killed on purpose in a running service: restarted, counted, visible on /healthz; and a stage
that cannot go on fails /healthz and makes ``serve`` (and ``sbd-stream serve``) stop non-zero."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import make_settings
from conftest import wait_until as _wait
from typer.testing import CliRunner

from sbd_stream.config import ServiceSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame
from sbd_stream.protocol import SeriesHeader, SeriesMessage, encode_frame
from sbd_stream.service import build as pipeline_mod
from sbd_stream.service.batch import BatchStage
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.sink import FrameTap
from sbd_stream.sinks.recorder import Recorder, open_recording

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Killed(BaseException):
    """What kills a stage's thread: not an ``Exception``, so no per-item guard catches it."""


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Bridge:
    """A hand-driven detector bridge (PUB) and a counter of what the service published."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.arr = np.ones((16, 16), np.uint16)

    def send_until(self, acq: str, pred, start: int = 0) -> int:
        """Send frames of ``acq`` until ``pred()``; returns how many were sent."""
        for seq in range(start, start + 2000):
            self.pub.send_multipart(encode_frame(self.arr, acq, seq, 0.0))
            if _wait(pred, 0.05):
                return seq + 1 - start
        pytest.fail(f"{acq}: condition never met")


def test_killed_stage_threads_are_restarted_counted_and_shown_on_healthz(
    tmp_path: Path, denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = zmq.Context.instance()
    bridge = Bridge(ctx)
    pipe = build_pipeline(make_settings(tmp_path, f"tcp://127.0.0.1:{bridge.port}"), denoiser, context=ctx)
    assert pipe.recorder is not None and pipe.publisher is not None
    kills = {"recorder": 0, "publisher": 0, "receiver": 0}
    real_write, real_send = pipe.recorder.write, pipe.publisher.send

    def write(item: Any, *compressed: Any) -> None:  # the recorder's signature (a pool chunk may follow)
        if item.acq == "kill" and not kills["recorder"]:
            kills["recorder"] += 1
            raise Killed("recorder thread killed on purpose")
        real_write(item, *compressed)

    def send(item: Any) -> bool:
        if item.acq == "kill" and not kills["publisher"]:
            kills["publisher"] += 1
            raise Killed("publisher thread killed on purpose")
        return real_send(item)

    def tap(frame: Frame) -> None:  # runs on the receive thread
        if frame.header.acq == "kill" and not kills["receiver"]:
            kills["receiver"] += 1
            raise Killed("receiver thread killed on purpose")

    monkeypatch.setattr(pipe.recorder, "write", write)
    monkeypatch.setattr(pipe.publisher, "send", send)
    pipe.add_sink(FrameTap(tap), first=True)
    pipe.start()
    m = pipe.metrics
    try:
        status, body = _healthz(pipe.metrics_port)
        assert status == 200 and body["ok"]
        assert {"receiver", "denoise", "publisher", "recorder", "metrics"} <= set(body["stages"])
        bridge.send_until("kill", lambda: all(kills.values()))
        restarted = ("receiver", "publisher", "recorder")
        labels = [{"stage": s} for s in restarted]
        assert _wait(lambda: all(m.value("sbd_stage_restarts_total", lab) == 1 for lab in labels))
        assert _wait(lambda: all(m.value("sbd_stage_up", lab) == 1 for lab in labels))
        # every stage works again: frames after the kills are received, denoised, published, recorded
        base = m.value("sbd_frames_recorded_total", {"kind": "raw"})
        published = m.value("sbd_frames_published_total", {"topic": "denoised"})
        n = bridge.send_until("after", lambda: m.value("sbd_frames_recorded_total", {"kind": "raw"}) > base)
        assert _wait(lambda: m.value("sbd_frames_published_total", {"topic": "denoised"}) > published)
        status, body = _healthz(pipe.metrics_port)
    finally:
        pipe.stop()
        bridge.pub.close(0)
    assert status == 200 and body["ok"], body
    for s in restarted:
        st = body["stages"][s]
        assert st["state"] == "up" and st["restarts"] == 1 and "killed on purpose" in st["last_error"]
    assert body["stages"]["denoise"]["restarts"] == 0
    with open_recording(tmp_path / "rec" / "after.nxs") as f:
        assert len(f["raw/complete"]) == n


def test_a_stage_that_cannot_go_on_fails_healthz(
    tmp_path: Path, denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = zmq.Context.instance()
    bridge = Bridge(ctx)
    s = make_settings(tmp_path, f"tcp://127.0.0.1:{bridge.port}")
    s.supervision.max_restarts = 1

    def always(item: Any, *compressed: Any) -> None:
        raise Killed("the disk controller is on fire")

    pipe = build_pipeline(s, denoiser, context=ctx)
    assert pipe.recorder is not None
    monkeypatch.setattr(pipe.recorder, "write", always)
    pipe.start()
    m = pipe.metrics
    try:
        bridge.send_until("x", lambda: pipe.supervisor.failed.is_set())
        status, body = _healthz(pipe.metrics_port)
    finally:
        pipe.stop()
        bridge.pub.close(0)
    assert status == 503 and not body["ok"]
    assert body["stages"]["recorder"]["state"] == "failed"
    assert "recorder" in body["failure"] and "on fire" in body["failure"]
    assert m.value("sbd_stage_up", {"stage": "recorder"}) == 0
    assert m.value("sbd_stage_restarts_total", {"stage": "recorder"}) == 1
    assert body["stages"]["receiver"]["state"] == "up"  # the others were fine


def test_serve_stops_and_reports_a_failed_stage(
    tmp_path: Path, denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = zmq.Context.instance()
    bridge = Bridge(ctx)
    s = make_settings(tmp_path, f"tcp://127.0.0.1:{bridge.port}")
    s.supervision.max_restarts = 0

    def always(self: Recorder, item: Any, *compressed: Any) -> None:
        raise Killed("broken for good")

    monkeypatch.setattr(Recorder, "write", always)
    stop = threading.Event()
    result: dict[str, Any] = {}
    stage = BatchStage(denoiser, s.detector, s.denoise.likelihood, s.denoise.bin_tolerance)
    runner = threading.Thread(target=lambda: result.update(pipeline_mod.serve(s, stop, stage=stage)))
    with caplog.at_level(logging.CRITICAL, logger="sbd_stream.service.pipeline"):
        runner.start()
        try:
            bridge.send_until("x", lambda: not runner.is_alive())
        finally:
            stop.set()
            runner.join(30)
            bridge.pub.close(0)
    assert "recorder" in result["failure"] and "broken for good" in result["failure"]
    assert any("stopping the service" in r.getMessage() for r in caplog.records)


def test_cli_serve_exits_non_zero_and_says_why(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's exit status: 0 after a clean stop, 3 when a stage could not go on."""
    from sbd_stream.cli import app

    outcomes = iter([None, "stage recorder crashed 2 times within 60 s (limit 1); last: Killed"])

    def fake_serve(settings: ServiceSettings, stop: threading.Event, **kw: Any) -> dict[str, Any]:
        return {"frames_received": 0, "failure": next(outcomes)}

    monkeypatch.setattr(pipeline_mod, "serve", fake_serve)
    monkeypatch.setattr("signal.signal", lambda *a: None)  # the command's handlers must not outlive it
    args = ["serve", "--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--no-record"]
    args += ["--input", "tcp://127.0.0.1:1", "--output", "tcp://127.0.0.1:*", "--metrics-port", "0"]
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 3
    assert "stage recorder crashed" in failed.output


def test_queue_gauges_follow_series_messages(tmp_path: Path, denoiser: Denoiser) -> None:
    """``sbd_queue_depth`` used to stay at its last value after series messages went through."""
    s = make_settings(tmp_path, "tcp://127.0.0.1:1")
    pipe = build_pipeline(s, denoiser, source=None)
    m = pipe.metrics
    for topic in (b"series_start", b"series_end"):
        pipe.handle_series(SeriesMessage(topic, SeriesHeader("a", 0.0)))
    assert m.value("sbd_queue_depth", {"queue": "denoise"}) == 2
    assert m.value("sbd_queue_depth", {"queue": "record"}) == 1
    pipe.start()
    try:
        assert _wait(lambda: m.value("sbd_frames_published_total", {"topic": "series_end"}) == 1)
        for q in ("denoise", "record", "publish"):
            assert _wait(lambda q=q: m.value("sbd_queue_depth", {"queue": q}) == 0), q
    finally:
        pipe.stop()
