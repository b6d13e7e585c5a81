"""A subscriber the publisher refuses at the handshake is counted and said once (session 29).

A viewer whose CURVE key the service does not allow, one without CURVE, or one with a wrong server key
received nothing, and the service said nothing and counted nothing: the operator saw a blank viewer
and a healthy service. Real ZeroMQ with CURVE on loopback, keys made in the test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import wait_until
from test_curve import _sub  # a SUB with or without CURVE, as the CURVE tests make it

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, FrameHeader
from sbd_stream.security import CurveSettings, generate_keypair
from sbd_stream.sinks.publisher import Publisher

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_refused_and_mismatched_subscribers_are_counted_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {n: generate_keypair(tmp_path / "keys", n) for n in ("service", "viewer", "intruder")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "viewer.key").write_bytes(keys["viewer"][0].read_bytes())
    curve = CurveSettings(enabled=True, secret_key_file=keys["service"][1], authorized_keys_dir=allowed)
    m = Metrics()
    caplog.set_level(logging.WARNING, "sbd_stream.sinks.publisher")
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", curve=curve), m, "e")
    failures = lambda c: m.value("sbd_publish_handshake_failures_total", {"cause": c})  # noqa: E731
    assert failures("refused") == 0 and failures("mismatch") == 0  # exported at 0 from the start
    ctx = zmq.Context()
    pub.start()
    socks = []
    try:
        client = lambda name, server: CurveSettings(  # noqa: E731
            enabled=True, secret_key_file=keys[name][1], server_public_key_file=keys[server][0]
        )
        good = _sub(ctx, pub.endpoint, client("viewer", "service"))
        socks += [good, _sub(ctx, pub.endpoint, client("intruder", "service"))]  # a key not allowed
        assert wait_until(lambda: failures("refused") >= 1, timeout=30), "the refused key was not counted"
        socks.append(_sub(ctx, pub.endpoint, None))  # no CURVE at all
        assert wait_until(lambda: failures("mismatch") >= 1, timeout=30), "the plain subscriber"
        socks.append(_sub(ctx, pub.endpoint, client("viewer", "intruder")))  # a wrong server key
        before = failures("mismatch")
        assert wait_until(lambda: failures("mismatch") > before, timeout=30), "the wrong server key"
        data = np.zeros((8, 8), np.float32)
        got = 0
        for q in range(200):  # the allowed viewer still gets frames
            pub.publish(TOPIC_DENOISED, FrameHeader("a", q, 0.0, (8, 8), "float32"), data)
            if good.poll(10):
                good.recv_multipart()
                got += 1
            if got:
                break
        assert got, "the allowed subscriber received nothing"
    finally:
        for s in socks:
            s.close(0)
        pub.stop()
        pub.join(10)
        ctx.term()
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "handshake" in r.getMessage()
    ]
    refused = [x for x in said if "authorized_keys_dir" in x]
    mismatch = [x for x in said if "does not use CURVE" in x]
    assert len(refused) == 1 and "cause='refused'" in refused[0], said
    assert len(mismatch) == 1 and "cause='mismatch'" in mismatch[0], said
    assert pub.endpoint in refused[0]
