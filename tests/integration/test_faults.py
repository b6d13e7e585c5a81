"""Faults on a running service: bad input, a restarted publisher, a subscriber that never reads.

The service must keep running through each and the metrics endpoint must count each event.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import make_settings, probe_through_service
from conftest import wait_until as _wait

from sbd_stream.config import SocketMode
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.metrics import EXPORTED_NAMES, LAZY_NAMES, MALFORMED_REASONS
from sbd_stream.protocol import encode_frame, encode_series
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector
from sbd_stream.sources.emulator import Emulator, EmulatorSettings
from sbd_stream.sources.receiver import Receiver

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.timeout(120)
def test_bad_input_restarts_and_a_stuck_subscriber_do_not_stop_the_service(
    tmp_path: Path, denoiser: Denoiser
) -> None:
    ctx = zmq.Context.instance()
    bridge = ctx.socket(zmq.PUB)  # a hand-driven detector bridge
    port = bridge.bind_to_random_port("tcp://127.0.0.1")
    s = make_settings(tmp_path, f"tcp://127.0.0.1:{port}")
    s.ingest.queue_frames = 1000  # lossless here: the test checks every frame got through
    s.ingest.rcvhwm = 100000  # and a loaded CI machine must not drop at the socket either
    s.publish.queue_frames = 1000  # nor at the publisher's drop-oldest queue (a CPU-starved publisher)
    # nor at the PUB socket: at the default HWM of 16 a CPU-starved CI machine dropped 2 of the reader's
    # frames (ZeroMQ drops at a peer's HWM silently; the stuck peer below only has to not stall us)
    s.publish.sndhwm = 1000
    pipe = build_pipeline(s, denoiser, context=ctx)
    pipe.start()
    assert pipe.publisher is not None
    stuck = ctx.socket(zmq.SUB)  # subscribes and never reads
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.setsockopt(zmq.RCVHWM, 2)
    stuck.connect(pipe.publisher.endpoint)
    col = Collector(pipe.publisher.endpoint, keep_data=False, context=ctx).start()
    m = pipe.metrics
    arr = np.random.default_rng(0).poisson(0.45, (64, 64)).astype(np.uint16)
    try:
        probe_through_service(bridge.send_multipart, col)  # no probe in flight after it: exact baseline
        base = m.value("sbd_frames_received_total")
        hdr = {"v": 1, "acq": "a", "seq": 0, "ts": 0.0, "shape": [64, 64], "dtype": "uint16"}
        bridge.send_multipart(encode_series(b"series_start", "a", 0.0))
        for seq in range(5):
            bridge.send_multipart(encode_frame(arr, "a", seq, 0.0))
        for parts in (
            [b"frame", b"{", b""],
            [b"frame", json.dumps({**hdr, "seq": 5}).encode(), b"short"],
            [b"frame", json.dumps({**hdr, "shape": [0, 99999]}).encode(), b""],
            [b"frame", json.dumps({**hdr, "dtype": "complex64"}).encode(), arr.tobytes()],
        ):
            bridge.send_multipart(parts)
        bridge.send_multipart(encode_frame(arr, "a", 4, 0.0))  # duplicate
        bridge.send_multipart(encode_frame(arr, "a", 8, 0.0))  # gap of 3
        bridge.send_multipart(encode_frame(arr, "a", 7, 0.0))  # late
        assert _wait(lambda: m.value("sbd_frames_received_total") - base == 7)
        # the bridge restarts: a new socket on the same port, counting from 0 again
        bridge.close(0)
        bridge = ctx.socket(zmq.PUB)
        assert _wait(lambda: _try_bind(bridge, port), 10)
        assert _wait(
            lambda: (
                bridge.send_multipart(encode_frame(arr, "a", 0, 0.0)),
                m.value("sbd_sequence_restarts_total") >= 2,
            )[1]
        ), {
            k: m.value(k)
            for k in (
                "sbd_frames_received_total",
                "sbd_sequence_restarts_total",
                "sbd_frames_duplicate_total",
                "sbd_frames_out_of_order_total",
            )
        }
        for seq in range(1, 60):  # the stuck peer never reads any of them
            bridge.send_multipart(encode_frame(arr, "a", seq, 0.0))
        bridge.send_multipart(encode_series(b"series_end", "a", 0.0))
        assert col.series_end.wait(30)
        assert _wait(lambda: m.value("sbd_frames_denoised_total") == m.value("sbd_frames_received_total"))
        got = _scrape(pipe.metrics_port)
    finally:
        stuck.close(0)
        col.close()
        bridge.close(0)
        pipe.stop()
    malformed = {k: v for k, v in got.items() if k.startswith("sbd_frames_malformed_total")}
    assert got.get('sbd_frames_malformed_total{reason="bad_json"}') == 1, malformed
    assert got['sbd_frames_malformed_total{reason="bad_length"}'] == 1
    assert got['sbd_frames_malformed_total{reason="bad_shape"}'] == 1
    assert got['sbd_frames_malformed_total{reason="bad_dtype"}'] == 1
    # every other reason is exported at 0 from the start (so increase() sees its first message)
    assert {k: v for k, v in malformed.items() if v} == {
        f'sbd_frames_malformed_total{{reason="{r}"}}': 1
        for r in ("bad_json", "bad_length", "bad_shape", "bad_dtype")
    }
    assert len(malformed) == len(MALFORMED_REASONS)
    assert got['sbd_stage_item_errors_total{stage="receiver"}'] == 0  # bad input is no stage error
    assert not [k for k in got if k.startswith("sbd_stage_up{") and "viewer" in k]  # no viewer runs here
    assert got["sbd_frames_duplicate_total"] >= 1  # seq 4 again (and repeats of the restart probe)
    assert got["sbd_frames_out_of_order_total"] == 1
    assert got["sbd_sequence_gaps_total"] >= 1 and got["sbd_frames_missing_total"] >= 3
    assert got["sbd_sequence_restarts_total"] >= 2  # series_start after probes; the bridge's restart
    assert got["sbd_frames_received_total"] - base >= 5 + 2 + 59
    # the subscriber that reads got the tail of the second run in order, whatever the stuck one did
    tail = [r.seq for r in col.frames(b"denoised") if r.acq == "a"][-59:]
    dropped = {k: v for k, v in got.items() if k.startswith("sbd_publish_dropped_total") and v}
    assert tail == list(range(1, 60)), dropped
    series = {k.split("{")[0] for k in got}
    for name in set(EXPORTED_NAMES) - set(LAZY_NAMES):  # every documented name is really exported
        assert series & {name, name + "_bucket", name + "_count"}, name


def _try_bind(sock: zmq.Socket, port: int) -> bool:
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
        return True
    except zmq.ZMQError:
        return False


@pytest.mark.timeout(120)
def test_emulator_restart_with_new_acquisition_is_a_restart(tmp_path: Path, denoiser: Denoiser) -> None:
    """The service binds and waits; two emulator runs connect to it one after the other."""
    ctx = zmq.Context.instance()
    s = make_settings(tmp_path, "tcp://127.0.0.1:*")
    s.ingest.mode = SocketMode.bind
    pipe = build_pipeline(s, denoiser, context=ctx)
    pipe.start()
    assert isinstance(pipe.source, Receiver)
    ep = pipe.source.endpoint
    try:
        for acq in ("first", "second"):
            cfg = EmulatorSettings(
                endpoint=ep, mode=SocketMode.connect, shape=(64, 64), n_frames=10, rate_hz=200
            )
            cfg.acq = acq
            emu = Emulator(cfg, ctx)
            emu.run()
            emu.close()
            assert _wait(lambda a=acq: (Path(s.record.directory) / f"{a}.nxs").exists())
        assert _wait(lambda: pipe.metrics.value("sbd_frames_denoised_total") == 20)
    finally:
        pipe.stop()
    assert pipe.metrics.value("sbd_frames_received_total") == 20
    assert pipe.metrics.value("sbd_series_messages_total", {"topic": "series_end"}) == 2
