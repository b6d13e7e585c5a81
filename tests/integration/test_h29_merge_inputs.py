"""The merge's inputs as an operator meets them: an instance that refused the merge's CURVE key and was
then fixed, an instance never heard of, a detector's raw frames sent to the merge.

Before: after one refused handshake libzmq never re-dialled, so the merge received nothing from that
instance for the rest of its life (also once ``merge.key`` was in its ``authorized_keys_dir`` and it was
restarted), without a line or a counter; ``sbd_merge_received_total{input}`` had no series for an
instance that never sent; a raw ``frame`` was logged as "malformed ...: frame", no reason named."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from sbd_stream.merge.service import MergeService
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_FRAME, encode_frame, encode_series
from sbd_stream.security import CurveSettings, apply_curve, generate_keypair, stop_authenticator

pytestmark = pytest.mark.integration


def _until(cond: Callable[[], bool], what: str, budget_s: float = 15.0) -> None:
    end = time.monotonic() + budget_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def _instance(ctx: zmq.Context, endpoint: str, secret: Path, allowed: Path) -> zmq.Socket:
    """An instance's publisher with ``[publish] curve`` and an ``authorized_keys_dir`` (bound anew)."""
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    apply_curve(
        pub, CurveSettings(enabled=True, secret_key_file=secret, authorized_keys_dir=allowed), True, "p"
    )
    end = time.monotonic() + 10.0
    while True:
        try:
            pub.bind(endpoint)
            return pub
        except zmq.ZMQError:  # the previous instance's port not yet released
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_merge_redials_an_instance_that_refused_its_key_once_it_is_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {n: generate_keypair(tmp_path / "keys", n) for n in ("instance", "merge", "viewer")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "viewer.key").write_bytes(keys["viewer"][0].read_bytes())  # the merge's key forgotten
    ctx = zmq.Context()
    pub = _instance(ctx, "tcp://127.0.0.1:*", keys["instance"][1], allowed)
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    svc = MergeService(
        [endpoint], "tcp://127.0.0.1:*", gap_timeout_s=0.2,
        input_curve=CurveSettings(
            enabled=True, role="client", secret_key_file=keys["merge"][1],
            server_public_key_file=keys["instance"][0],
        ),
    )  # fmt: skip
    failures = {"input": "0", "cause": "handshake"}
    with caplog.at_level(logging.WARNING, "sbd_stream"):
        svc.start()
        try:
            _until(lambda: svc.metrics.value("sbd_merge_input_disconnects_total", failures) > 0, "refused")
            # the operator adds merge.key and restarts the instance on the same port
            (allowed / "merge.key").write_bytes(keys["merge"][0].read_bytes())
            pub.close(linger=0)
            pub = _instance(ctx, endpoint, keys["instance"][1], allowed)
            pub.send_multipart(encode_series(b"series_start", "acq", 1.0, {}))

            def got() -> bool:
                data = np.zeros((4, 4), np.float32)
                pub.send_multipart(encode_frame(data, "acq", 0, 1.0, topic=TOPIC_DENOISED))
                return svc.metrics.value("sbd_merge_received_total", {"input": "0"}) > 0

            _until(got, "a message from the instance that now allows the merge")
        finally:
            svc.stop()
            svc.join()
            pub.close(linger=0)
            stop_authenticator(ctx)
            ctx.term()
    hints = [r.getMessage() for r in caplog.records if "authorized_keys_dir" in r.getMessage()]
    assert len(hints) == 1 and endpoint in hints[0], hints  # what to check, once per input
    failed = [r.getMessage() for r in caplog.records if "handshake failed with" in r.getMessage()]
    assert failed and f"handshake failed with {endpoint} " in failed[0], failed  # not b'tcp://...'


def test_merge_exports_each_input_at_zero_and_names_the_reason_of_a_raw_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = MergeService(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], "tcp://127.0.0.1:*")
    try:
        reg = svc.metrics.registry
        for i in ("0", "1"):  # an instance never heard of shows as a flat line, not as no series
            assert reg.get_sample_value("sbd_merge_received_total", {"input": i}) == 0.0
            assert (
                reg.get_sample_value("sbd_merge_input_disconnects_total", {"input": i, "cause": "handshake"})
                == 0
            )
        raw = encode_frame(np.zeros((2, 2), np.uint16), "acq", 0, 1.0, topic=TOPIC_FRAME)
        with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
            svc.handle(1, [zmq.Frame(p) for p in raw])
    finally:
        svc.close()
    assert svc.metrics.value("sbd_merge_malformed_total", {"reason": "unexpected_topic"}) == 1
    said = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(said) == 1 and "unexpected_topic" in said[0] and "raw frame" in said[0], said


def test_merge_hears_an_instance_again_after_it_sent_a_part_over_the_size_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A garbage node's oversized part makes libzmq drop the connection for a protocol error, after
    which a connecting socket never re-dials: the merge was deaf to that instance from then on. The
    line names the merge's own limit (it named the service's ``ingest.max_payload_bytes``)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind("tcp://127.0.0.1:*")
    svc = MergeService(
        [pub.getsockopt_string(zmq.LAST_ENDPOINT)], "tcp://127.0.0.1:*", max_payload_bytes=1000
    )
    caplog.set_level(logging.ERROR, "sbd_stream")
    svc.start()
    try:
        start = encode_series(b"series_start", "acq", 1.0, {})

        def heard(n: float) -> Callable[[], bool]:
            def check() -> bool:
                pub.send_multipart(start)
                return svc.metrics.value("sbd_merge_received_total", {"input": "0"}) >= n

            return check

        _until(heard(1), "the instance before the oversized part")
        pub.send_multipart([b"denoised", b"{}", bytes(3 << 20)])  # over MAXMSGSIZE (2 x 1000 + 1 MiB)
        _until(
            lambda: svc.metrics.value("sbd_merge_malformed_total", {"reason": "oversized"}) == 1,
            "the dropped peer counted as an oversized message",
        )
        seen = svc.metrics.value("sbd_merge_received_total", {"input": "0"})
        _until(heard(seen + 1), "the instance after the oversized part")
    finally:
        svc.stop()
        svc.join()
        pub.close(linger=0)
        ctx.term()
    said = [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()]
    assert len(said) == 1 and "the merge's 1.1 MB" in said[0] and "ingest." not in said[0], said


def test_merge_with_a_busy_metrics_port_says_which_port_in_one_line() -> None:
    """It said "error: merge: [Errno 98] Address already in use", after binding its output: which of the
    two ports was busy was left to guess."""
    import socket

    from typer.testing import CliRunner

    from sbd_stream.cli import app

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        res = CliRunner().invoke(
            app,
            [
                "merge",
                "--input",
                "tcp://127.0.0.1:1",
                "--output",
                "tcp://127.0.0.1:*",
                "--metrics-port",
                str(port),
            ],
        )
    finally:
        busy.close()
    assert res.exit_code == 2, res.output
    assert f"--metrics-port {port}" in res.output, res.output
