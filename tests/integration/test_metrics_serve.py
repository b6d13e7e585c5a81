"""`sbd-stream serve` as a process: the metrics endpoint it names, and the stages it reports.

``serve --metrics-port 0`` printed ``metrics http://127.0.0.1:0/metrics`` and never the port it bound;
a service without a viewer exported ``sbd_stage_up{stage="viewer"} 0``, which the dashboard's stage
health panel read as a stage down.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zmq
from conftest import free_port, wait_until
from helpers_procs import interrupt_then_kill

pytestmark = pytest.mark.integration


def _free_zmq_port(ctx: zmq.Context) -> int:
    return free_port(ctx)  # a plain socket: a ZeroMQ one's close is asynchronous (conftest.free_port)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:  # /healthz answers 503 while a stage is not up
        return e.code, e.read()


def _logged_url(lines: list[str]) -> str | None:
    """The metrics endpoint's base URL as the service logged it once bound (None: not logged yet)."""
    for ln in list(lines):
        if m := re.search(r"metrics on (http://\S+)/metrics", ln):
            return m.group(1)
    return None


@pytest.mark.timeout(180)
def test_serve_on_a_free_metrics_port_names_it_and_exports_only_the_stages_it_runs(
    tiny_engine_dir: Path,
) -> None:
    ctx = zmq.Context.instance()
    cmd = [
        sys.executable, "-m", "sbd_stream", "serve",
        "--input", f"tcp://127.0.0.1:{_free_zmq_port(ctx)}", "--output", f"tcp://127.0.0.1:{_free_zmq_port(ctx)}",
        "--no-record", "--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--metrics-port", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        # the first status line comes 2 s after the pipeline started (and its metrics server bound)
        running = lambda: any(re.match(r"\s+[\d.]+s\s+in \d", ln) for ln in list(lines))  # noqa: E731
        assert wait_until(lambda: running() or proc.poll() is not None, 120), "".join(lines)
        base = _logged_url(lines)
        assert base, "".join(lines)
        assert not base.endswith(":0")
        banner = next(ln for ln in lines if ln.startswith("serving:"))
        assert ":0/metrics" not in banner and "logged once bound" in banner, banner
        # every stage the service runs is up (and on /healthz); no viewer, no recorder: not exported
        health: dict = {}

        def all_up() -> bool:
            code, body = _get(f"{base}/healthz")
            health.update(json.loads(body))
            return code == 200 and all(st["up"] for st in health["stages"].values())

        assert wait_until(all_up, 60), health
        text = _get(f"{base}/metrics")[1].decode()
        up = dict(re.findall(r'^sbd_stage_up\{stage="([^"]+)"\} (\S+)$', text, re.M))
        assert "viewer" not in up and "recorder" not in up, up
        assert set(up) == set(health["stages"]) and all(float(v) == 1 for v in up.values()), (up, health)
    finally:
        interrupt_then_kill(proc, grace=60)
        reader.join(10)
    assert proc.returncode == 0, "".join(lines)[-3000:]
