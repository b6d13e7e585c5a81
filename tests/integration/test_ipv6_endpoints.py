"""IPv6 literals in ZeroMQ endpoints: an emulator bound on [::1], `serve` connecting to it and publishing
on [::1], a subscriber on [::1]. Before, no socket set ``zmq.IPV6``: a bind said "No such device" and a
connect never connected (0 frames, no warning), though the endpoint check let them through."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import zmq
from conftest import free_port, service_metric, wait_until
from helpers_procs import kill_if_running

from sbd_stream.protocol import ipv6_endpoint
from sbd_stream.service.demo import Collector
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration


def _ipv6_loopback() -> str | None:
    """Why [::1] cannot be used here, or None."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"no IPv6 loopback here ({e})"
    return None


def test_only_ipv6_literals_turn_ipv6_on() -> None:
    """Names stay IPv4: under zmq.IPV6 ``localhost`` resolves to ::1 first where /etc/hosts says so,
    and a peer bound on 127.0.0.1 would never answer."""
    for ep in (
        "tcp://[::1]:5555",
        "tcp://[::]:*",
        "tcp://[fe80::1%eth0]:5555",
        "tcp://127.0.0.1:0;[::1]:5555",
    ):
        assert ipv6_endpoint(ep), ep
    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://*:5556", "ipc:///tmp/x", "inproc://a"):
        assert not ipv6_endpoint(ep), ep


@pytest.mark.timeout(240)
@pytest.mark.skipif(_ipv6_loopback() is not None, reason=str(_ipv6_loopback()))
def test_serve_and_emulate_over_ipv6_loopback(tiny_engine_dir) -> None:
    ctx = zmq.Context.instance()
    emu = Emulator(
        EmulatorSettings(
            endpoint="tcp://[::1]:*", shape=(64, 64), n_frames=12, rate_hz=50, wait_subscriber_s=60
        ),
        ctx,
    )
    assert emu.endpoint.startswith("tcp://[::1]:")
    out_port, metrics_port = free_port(), free_port()  # free on [::1] and 127.0.0.1 alike
    cmd = [
        sys.executable, "-m", "sbd_stream", "serve", "--input", emu.endpoint, "--output",
        f"tcp://[::1]:{out_port}", "--no-record", "--model", str(tiny_engine_dir), "--engine", "onnxruntime",
        "--metrics-port", str(metrics_port), "--policy", "lossless",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    col = None
    try:
        assert wait_until(lambda: service_metric(metrics_port, "sbd_frames_received_total") is not None, 120)
        col = Collector(f"tcp://[::1]:{out_port}", keep_data=False, context=ctx).start()
        assert emu.run() == 12  # returns once serve subscribed over [::1] and all were sent
        assert wait_until(lambda: service_metric(metrics_port, "sbd_frames_denoised_total") == 12, 60)
        assert wait_until(lambda: col.series_end.is_set(), 30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc, timeout=10)
        if col is not None:
            col.close()
        emu.close()
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out[out.index("{") :])["frames_received"] == 12
    assert col.frames(b"denoised")  # published on [::1] and received there


@pytest.mark.timeout(120)
@pytest.mark.skipif(_ipv6_loopback() is not None, reason=str(_ipv6_loopback()))
def test_the_merge_takes_and_publishes_ipv6_endpoints() -> None:
    """Instances publishing on [::1] and the merged stream on [::1]: the merge's SUBs never connected and
    its PUB refused to bind ("No such device") without ``zmq.IPV6``."""
    from test_merge_service_restart import Merged

    m = Merged(host="[::1]")  # every hop probed open first: this is where the old code hung
    try:
        assert m.merge.endpoint.startswith("tcp://[::1]:")
        m.series(0, b"series_start", "v6", 1.0)
        for seq in range(4):
            m.frame(seq % 2, "v6", seq, 1.0 + seq / 100)
        want = [("series_start", -1), *(("denoised", q) for q in range(4))]
        assert wait_until(lambda: m.got("v6") == want, 30), m.got("v6")
    finally:
        m.close()
