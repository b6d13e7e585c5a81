"""CURVE on real sockets: without the right keys a subscriber receives nothing; with them frames flow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from sbd_stream.config import IngestSettings
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_FRAME, SeriesMessage, decode, encode_frame
from sbd_stream.security import (
    CurveError,
    CurveSettings,
    apply_curve,
    generate_keypair,
    stop_authenticator,
)
from sbd_stream.sources.dectris.sim import v1_series
from sbd_stream.sources.receiver import Receiver, open_receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Key pairs made in the test; 'viewer' is authorised by the server, 'intruder' is not."""
    out = {n: generate_keypair(tmp_path / "keys", n) for n in ("server", "viewer", "intruder")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "viewer.key").write_bytes(out["viewer"][0].read_bytes())
    return out


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    stop_authenticator(c)
    c.term()


def _pub(ctx: zmq.Context, curve: CurveSettings) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    apply_curve(sock, curve, binds=True, domain="test-out")
    sock.bind("tcp://127.0.0.1:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _sub(ctx: zmq.Context, endpoint: str, curve: CurveSettings | None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    if curve is not None:
        apply_curve(sock, curve, binds=False, domain="unused")
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _pump(pub: zmq.Socket, subs: dict[str, zmq.Socket], seconds: float = 2.0) -> dict[str, int]:
    """Publish frames for a while; count valid frames each subscriber decodes."""
    got = dict.fromkeys(subs, 0)
    poller = zmq.Poller()
    for s in subs.values():
        poller.register(s, zmq.POLLIN)
    frame = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    end, seq = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        pub.send_multipart(encode_frame(frame, "curve-test", seq, time.time()))
        seq += 1
        for sock, _ in poller.poll(20):
            name = next(n for n, s in subs.items() if s is sock)
            while True:
                try:
                    msg = decode(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                assert msg.topic == TOPIC_FRAME
                np.testing.assert_array_equal(msg.data, frame)
                got[name] += 1
    return got


def test_only_authorised_client_with_server_key_receives(ctx: zmq.Context, keys, tmp_path: Path) -> None:
    server = CurveSettings(
        enabled=True, secret_key_file=keys["server"][1], authorized_keys_dir=tmp_path / "allowed"
    )
    pub, ep = _pub(ctx, server)

    def client(name: str, server_key: Path) -> CurveSettings:
        return CurveSettings(enabled=True, secret_key_file=keys[name][1], server_public_key_file=server_key)

    subs = {
        "authorised": _sub(ctx, ep, client("viewer", keys["server"][0])),
        "plain": _sub(ctx, ep, None),  # no CURVE at all
        "unauthorised": _sub(ctx, ep, client("intruder", keys["server"][0])),  # valid keys, not allowed
        "wrong_server_key": _sub(ctx, ep, client("viewer", keys["intruder"][0])),  # would talk to an impostor
    }
    got = _pump(pub, subs)
    assert got["authorised"] > 10
    assert got["plain"] == 0 and got["unauthorised"] == 0 and got["wrong_server_key"] == 0
    for s in (pub, *subs.values()):
        s.close()


def test_server_without_allow_list_accepts_any_client_that_knows_its_key(ctx: zmq.Context, keys) -> None:
    pub, ep = _pub(ctx, CurveSettings(enabled=True, secret_key_file=keys["server"][1]))
    good = CurveSettings(
        enabled=True, secret_key_file=keys["intruder"][1], server_public_key_file=keys["server"][0]
    )
    subs = {"any_client": _sub(ctx, ep, good), "plain": _sub(ctx, ep, None)}
    got = _pump(pub, subs, 1.5)
    assert got["any_client"] > 10 and got["plain"] == 0
    for s in (pub, *subs.values()):
        s.close()


def test_curve_settings_validation_and_key_errors(tmp_path: Path, keys) -> None:
    assert not CurveSettings().enabled  # off by default
    with pytest.raises(ValueError, match="secret_key_file"):
        CurveSettings(enabled=True)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.SUB)
        with pytest.raises(CurveError, match="no secret key"):  # a public .key is not a key pair
            apply_curve(sock, CurveSettings(enabled=True, secret_key_file=keys["server"][0]), False, "d")
        with pytest.raises(CurveError, match="server_public_key_file"):
            apply_curve(sock, CurveSettings(enabled=True, secret_key_file=keys["viewer"][1]), False, "d")
        empty = tmp_path / "empty"
        empty.mkdir()
        bad = CurveSettings(enabled=True, secret_key_file=keys["server"][1], authorized_keys_dir=empty)
        with pytest.raises(CurveError, match="nobody could connect"):
            apply_curve(sock, bad, True, "d")
        sock.close()
    finally:
        stop_authenticator(ctx)
        ctx.term()
    assert oct(keys["server"][1].stat().st_mode & 0o777) == "0o600"


def test_dectris_pull_input_over_curve(ctx: zmq.Context, keys, tmp_path: Path) -> None:
    """A DCU-like PUSH sender binds as CURVE server; the DECTRIS receiver connects as its client.

    ``ingest.curve`` used to be ignored for DECTRIS input: the receiver now applies it for every
    dialect, so only the authorised client completes the handshake and PUSH routes everything to it.
    """
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndtimeo = 10_000  # PUSH blocks while no peer finished its handshake: fail, don't hang
    server = CurveSettings(
        enabled=True, secret_key_file=keys["server"][1], authorized_keys_dir=tmp_path / "allowed"
    )
    apply_curve(push, server, binds=True, domain="dcu")
    push.bind("tcp://127.0.0.1:*")
    ep = push.getsockopt_string(zmq.LAST_ENDPOINT)

    def receiver(curve: CurveSettings) -> tuple[Receiver, list[Frame], list[SeriesMessage]]:
        frames: list[Frame] = []
        series: list[SeriesMessage] = []
        s = IngestSettings.model_validate(
            {"endpoint": ep, "mode": "connect", "curve": curve, "input": {"dialect": "dectris-stream-v1"}}
        )
        return open_receiver(s, Metrics(), frames.append, series.append, ctx), frames, series

    def client(name: str) -> CurveSettings:
        return CurveSettings(
            enabled=True, secret_key_file=keys[name][1], server_public_key_file=keys["server"][0]
        )

    rx = {
        "authorised": receiver(client("viewer")),
        "plain": receiver(CurveSettings()),
        "unauthorised": receiver(client("intruder")),
    }
    data = [np.random.default_rng(i).poisson(0.45, (24, 40)).astype(np.uint16) for i in range(8)]
    for r, _, _ in rx.values():
        r.start()
    try:
        for parts in v1_series(data, 17):
            push.send_multipart(parts)
        series = rx["authorised"][2]
        end = time.monotonic() + 20
        while not any(m.topic == b"series_end" for m in series) and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        for r, _, _ in rx.values():
            r.stop()
        for r, _, _ in rx.values():
            r.join(5)
        push.close()
    ing, frames, series = rx["authorised"]
    assert [f.header.seq for f in frames] == list(range(8))
    for f, ref in zip(frames, data, strict=True):
        np.testing.assert_array_equal(f.data, ref)
    assert [m.topic for m in series] == [b"series_start", b"series_end"]
    assert ing.metrics.value("sbd_frames_received_total") == 8
    for name in ("plain", "unauthorised"):
        other, got, seen = rx[name]
        assert got == [] and seen == [] and other.metrics.value("sbd_frames_received_total") == 0


def test_keygen_keeps_an_existing_pair_unless_forced(tmp_path: Path) -> None:
    """Overwriting a pair silently locked out every client holding the old public key."""
    import subprocess
    import sys

    def keygen(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "sbd_stream.security", "keygen", str(tmp_path), "svc", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    first = keygen()
    assert first.returncode == 0 and "svc.key_secret" in first.stdout, first.stderr
    before = (tmp_path / "svc.key").read_bytes(), (tmp_path / "svc.key_secret").read_bytes()
    again = keygen()
    assert again.returncode == 1 and again.stdout == "", again
    assert again.stderr.count("\n") == 1 and again.stderr.startswith("error: ") and "--force" in again.stderr
    assert ((tmp_path / "svc.key").read_bytes(), (tmp_path / "svc.key_secret").read_bytes()) == before
    (tmp_path / "svc.key").unlink()  # half a pair is kept too: its other half may be in use
    assert keygen().returncode == 1 and (tmp_path / "svc.key_secret").read_bytes() == before[1]
    forced = keygen("--force")
    assert forced.returncode == 0 and (tmp_path / "svc.key_secret").read_bytes() != before[1]
    assert (tmp_path / "svc.key_secret").stat().st_mode & 0o777 == 0o600
