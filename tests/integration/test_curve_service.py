"""CURVE on the running service: encrypted, authenticated input and output; the viewer still sees frames."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, handshake

from sbd_stream.config import load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, decode, encode_frame, encode_series
from sbd_stream.security import CurveSettings, apply_curve, generate_keypair, stop_authenticator
from sbd_stream.service.build import build_pipeline

pytestmark = pytest.mark.integration
N = 20


def _sub(ctx: zmq.Context, endpoint: str, curve: CurveSettings | None) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.linger = 0
    if curve is not None:
        apply_curve(s, curve, binds=False, domain="unused")
    s.setsockopt(zmq.SUBSCRIBE, b"denoised")
    s.connect(endpoint)
    return s


def _drain(sock: zmq.Socket, probes: list[int] | None = None) -> list[int]:
    """Sequence numbers of the denoised frames waiting; readiness probes go to ``probes``."""
    seqs = []
    while sock.poll(0):
        h = decode(sock.recv_multipart()).header
        if h.acq == PROBE_ACQ:
            if probes is not None:
                probes.append(h.seq)  # type: ignore[union-attr]
            continue
        seqs.append(h.seq)  # type: ignore[union-attr]
    return seqs


@pytest.mark.timeout(120)
def test_service_with_curve_on_input_and_output(tmp_path: Path, tiny_engine_dir: Path) -> None:
    kd = tmp_path / "keys"
    k = {n: generate_keypair(kd, n) for n in ("detector", "service", "analysis", "intruder")}
    det_allowed, out_allowed = tmp_path / "det-allowed", tmp_path / "out-allowed"
    det_allowed.mkdir()
    out_allowed.mkdir()
    (det_allowed / "service.key").write_bytes(k["service"][0].read_bytes())
    (out_allowed / "analysis.key").write_bytes(k["analysis"][0].read_bytes())

    # the detector bridge: a CURVE server that only lets the service subscribe
    det_ctx = zmq.Context()
    det = det_ctx.socket(zmq.XPUB)
    det.linger = 0
    det_curve = CurveSettings(enabled=True, secret_key_file=k["detector"][1], authorized_keys_dir=det_allowed)
    apply_curve(det, det_curve, binds=True, domain="detector")
    det.bind("tcp://127.0.0.1:*")

    svc_secret = str(k["service"][1])
    settings = load_settings(
        overrides={
            "ingest": {
                "endpoint": det.getsockopt_string(zmq.LAST_ENDPOINT),
                "mode": "connect",
                "curve": {
                    "enabled": True,
                    "secret_key_file": svc_secret,
                    "server_public_key_file": str(k["detector"][0]),
                },
            },
            "publish": {
                "endpoint": "tcp://127.0.0.1:*",
                "curve": {
                    "enabled": True,
                    "secret_key_file": svc_secret,
                    "authorized_keys_dir": str(out_allowed),
                },
            },
            "record": {"enabled": False},
            "metrics": {"port": 0},
            "viewer": {"enabled": True, "port": 0},
        }
    )
    svc_ctx = zmq.Context()
    pipe = build_pipeline(
        settings, Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir), context=svc_ctx
    )
    pipe.start()
    cli_ctx = zmq.Context()
    assert pipe.publisher is not None
    ep = pipe.publisher.endpoint

    def client(name: str) -> CurveSettings:
        return CurveSettings(enabled=True, secret_key_file=k[name][1], server_public_key_file=k["service"][0])

    subs = {
        "analysis": _sub(cli_ctx, ep, client("analysis")),
        "intruder": _sub(cli_ctx, ep, client("intruder")),
    }
    subs["plain"] = _sub(cli_ctx, ep, None)
    try:
        assert det.poll(10000), "the service never subscribed through CURVE"
        det.recv_multipart()
        # probe frames through the service until the authorised subscriber gets one, and the last one
        probes: list[int] = []
        arr = np.zeros((64, 64), np.uint16)

        def seen() -> int:
            assert _drain(subs["analysis"], probes) == []  # nothing but probes before the series
            return max(probes, default=-1)

        handshake(lambda i: det.send_multipart(encode_frame(arr, PROBE_ACQ, i, time.time())), seen)
        base = pipe.metrics.value("sbd_frames_received_total")
        assert pipe.viewer is not None
        raw_base = pipe.viewer.store.received["raw"]
        det.send_multipart(encode_series(TOPIC_SERIES_START, "curve-acq", time.time()))
        frames = np.random.default_rng(0).poisson(0.45, (N, 64, 64)).astype(np.uint16)
        for i in range(N):
            det.send_multipart(encode_frame(frames[i], "curve-acq", i, time.time()))
            time.sleep(0.02)
        det.send_multipart(encode_series(TOPIC_SERIES_END, "curve-acq", time.time()))
        got: dict[str, list[int]] = {n: [] for n in subs}
        end = time.monotonic() + 60
        while time.monotonic() < end and len(got["analysis"]) < N:
            for n, s in subs.items():
                got[n] += _drain(s)
            time.sleep(0.05)
        # deliberate, not a readiness wait (the authorised path was probed open above): subscribers that
        # must get nothing cannot be probed, so a leak to them is given 0.3 s more to show
        time.sleep(0.3)
        for n, s in subs.items():
            got[n] += _drain(s)
        assert pipe.metrics.value("sbd_frames_received_total") - base == N  # input flowed through CURVE
        assert got["analysis"] == list(range(N))  # authorised subscriber: every denoised frame
        assert got["intruder"] == [] and got["plain"] == []
        # the in-process viewer subscribes with the service's own key pair, and taps raw frames
        v = pipe.viewer
        assert v is not None and v.store.received["raw"] - raw_base == N
        st = v.status()
        assert st["frames"]["denoised"] is not None and st["frames"]["denoised"]["seq"] == N - 1
    finally:
        for s in subs.values():
            s.close()
        pipe.stop()
        det.close()
        for c in (det_ctx, svc_ctx):
            stop_authenticator(c)
        for c in (det_ctx, svc_ctx, cli_ctx):
            c.term()
