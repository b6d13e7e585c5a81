"""`merge` across an untrusted network: CURVE on its inputs (the instances' ``[publish] curve``) and on
its output. Before, the merge had no CURVE and received nothing from such instances, without a word."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.merge.service import MergeService
from sbd_stream.protocol import TOPIC_DENOISED, decode, encode_frame, encode_series
from sbd_stream.security import CurveSettings, apply_curve, generate_keypair, stop_authenticator

pytestmark = pytest.mark.integration


def test_merge_receives_from_curve_instances_and_serves_only_allowed_subscribers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """... and the refused subscribers are counted and said once per cause (session 29: neither)."""
    caplog.set_level(logging.WARNING, "sbd_stream.merge")
    keys = {n: generate_keypair(tmp_path / "keys", n) for n in ("instance", "merge", "viewer", "intruder")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "viewer.key").write_bytes(keys["viewer"][0].read_bytes())
    ctx = zmq.Context()
    inst = ctx.socket(zmq.PUB)  # an instance publishing with [publish] curve
    inst.linger = 0
    apply_curve(inst, CurveSettings(enabled=True, secret_key_file=keys["instance"][1]), True, "inst")
    inst.bind("tcp://127.0.0.1:*")
    svc = MergeService(
        [inst.getsockopt_string(zmq.LAST_ENDPOINT)], "tcp://127.0.0.1:*", gap_timeout_s=0.2, context=ctx,
        input_curve=CurveSettings(
            enabled=True, role="client", secret_key_file=keys["merge"][1],
            server_public_key_file=keys["instance"][0],
        ),
        output_curve=CurveSettings(
            enabled=True, role="server", secret_key_file=keys["merge"][1], authorized_keys_dir=allowed
        ),
    )  # fmt: skip
    subs = {}
    for name in ("viewer", "intruder", "plain"):
        s = ctx.socket(zmq.SUB)
        s.linger = 0
        if name != "plain":
            client = CurveSettings(
                enabled=True, secret_key_file=keys[name][1], server_public_key_file=keys["merge"][0]
            )
            apply_curve(s, client, False, "unused")
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(svc.endpoint)
        subs[name] = s
    svc.start()
    got = dict.fromkeys(subs, 0)
    try:
        end, seq = time.monotonic() + 3.0, 0
        inst.send_multipart(encode_series(b"series_start", "acq", 1.0, {}))
        while time.monotonic() < end:
            data = np.full((4, 4), seq, np.float32)
            inst.send_multipart(encode_frame(data, "acq", seq, 1.0 + seq, topic=TOPIC_DENOISED))
            seq += 1
            time.sleep(0.01)
            for name, s in subs.items():
                while s.poll(0):
                    msg = decode(s.recv_multipart())
                    got[name] += msg.topic == TOPIC_DENOISED
    finally:
        svc.stop()
        svc.join()
        for s in (inst, *subs.values()):
            s.close(linger=0)
        stop_authenticator(ctx)
        ctx.term()
    assert got["viewer"] > 10, got  # through CURVE in and out
    assert got["intruder"] == 0 and got["plain"] == 0
    failed = lambda c: svc.metrics.value("sbd_merge_output_handshake_failures_total", {"cause": c})  # noqa: E731
    assert failed("refused") >= 1 and failed("mismatch") >= 1
    said = [r.getMessage() for r in caplog.records if "handshake failed" in r.getMessage()]
    assert len([x for x in said if "--curve-clients folder" in x]) == 1, said
    assert len([x for x in said if "do not match" in x]) == 1, said


def test_merge_curve_flags_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    pub, secret = generate_keypair(tmp_path, "merge")
    bad_clients, no_keys = tmp_path / "clients", tmp_path / "empty"
    bad_clients.mkdir()
    no_keys.mkdir()
    (bad_clients / "viewer.key").write_text('metadata\ncurve\n    public-key = "short"\n')
    runner = CliRunner()
    cases = [
        (["--curve-server-key", str(pub)], "need --curve-secret-key"),
        (["--curve-secret-key", str(secret)], "alone does nothing"),
        (
            ["--curve-secret-key", str(secret), "--curve-server-key", str(tmp_path / "none.key")],
            "cannot read",
        ),
        (["--curve-secret-key", str(secret), "--curve-clients", str(pub)], "is not a folder"),
        # each key in the folder is read at start, as serve does (it was a traceback at set-up)
        (["--curve-secret-key", str(secret), "--curve-clients", str(bad_clients)], "viewer.key"),
        (["--curve-secret-key", str(secret), "--curve-clients", str(no_keys)], "holds no *.key"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["merge", "--input", "tcp://127.0.0.1:1", *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
