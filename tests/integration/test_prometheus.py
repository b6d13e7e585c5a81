"""A real Prometheus server scrapes the running service; its query API returns our frame counters."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import zmq
from conftest import ci_provided
from prometheus_api import free_port, query, stop

from sbd_stream.config import load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.build import build_pipeline
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
N_FRAMES = 24


@pytest.mark.timeout(180)
@pytest.mark.skipif(PROMETHEUS is None, reason=ci_provided("Debian package 'prometheus' is not installed"))
def test_prometheus_scrapes_service_and_query_returns_frame_counters(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    ctx = zmq.Context.instance()
    emu = Emulator(
        EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(64, 64), n_frames=N_FRAMES, rate_hz=100), ctx
    )
    settings = load_settings(
        overrides={
            "ingest": {"endpoint": emu.endpoint, "mode": "connect"},
            "publish": {"endpoint": "tcp://127.0.0.1:*"},
            # recorded: the complete lane runs only with a recording (its frames go there alone)
            "record": {"enabled": True, "directory": str(tmp_path / "rec")},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    pipe = build_pipeline(
        settings, Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir), context=ctx
    )
    pipe.start()
    prom: subprocess.Popen | None = None
    try:
        emu.start()
        emu.join(30)
        end = time.monotonic() + 60
        while pipe.metrics.value("sbd_frames_denoised_total") < N_FRAMES and time.monotonic() < end:
            time.sleep(0.1)
        assert pipe.metrics.value("sbd_frames_received_total") == N_FRAMES

        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: sbd-stream\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{pipe.metrics_port}']\n"
        )
        promtool = shutil.which("promtool")
        if promtool:
            subprocess.run(
                [promtool, "check", "config", str(cfg)], check=True, capture_output=True, timeout=30
            )
        port = free_port()  # never 9090: a packaged Prometheus may already run there as a service
        log = (tmp_path / "prometheus.log").open("w")
        prom = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        t_prom = time.monotonic()
        received: list[dict] = []
        end = time.monotonic() + 60
        while time.monotonic() < end and prom.poll() is None:
            try:
                received = query(base, 'sbd_frames_received_total{job="sbd-stream"}')
            except OSError:
                received = []  # not listening yet
            if received:
                break
            time.sleep(0.5)
        assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert received, "Prometheus never returned sbd_frames_received_total"
        print(f"prometheus answered after {time.monotonic() - t_prom:.1f} s")
        assert float(received[0]["value"][1]) == N_FRAMES
        assert received[0]["metric"]["instance"] == f"127.0.0.1:{pipe.metrics_port}"
        denoised = query(base, "sbd_frames_denoised_total")
        assert float(denoised[0]["value"][1]) == N_FRAMES
        # two lanes (the default): a frame the live lane skipped under load is denoised by the complete
        # lane, recorded and counted there, not published (docs/service.md "Two lanes"); audit 26 saw
        # 16 and 22 of 24 published under load, the rest completed
        published = query(base, 'sum(sbd_frames_published_total{topic="denoised"})')
        completed = query(base, "sum(sbd_frames_completed_total)")
        n_completed = float(completed[0]["value"][1]) if completed else 0.0
        assert float(published[0]["value"][1]) + n_completed == N_FRAMES
        assert float(published[0]["value"][1]) >= 1
        # the scrape itself is healthy (Prometheus' own view of the target)
        assert float(query(base, 'up{job="sbd-stream"}')[0]["value"][1]) == 1.0
    finally:
        stop(prom)
        emu.close()
        pipe.stop()
