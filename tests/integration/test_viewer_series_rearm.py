"""The viewer follows a re-armed or restarted acquisition (independent-client audit h28, item 1).

An acquisition id re-armed with a new ``series_start`` (or a sender restarted under the same id) counts
``seq`` from 0 again. The viewer compared numbers across the two series, so "the newest frame" stayed the
old series' seq 29 until the new series passed it (for ever if it was shorter), ``/api/status`` timed it
before the new ``series_start`` (a negative ``since_start_s``) and ``?seq=N`` could answer either series.
These tests drive the real viewer: real PUB sockets on loopback, real HTTP; the last one the real
service with its in-process viewer (raw frames from its tap, outputs from its PUB).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, handshake, wait_until

from sbd_stream.config import ViewerSettings, load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_LLR,
    TOPIC_SERIES_START,
    encode_frame,
    encode_series,
)
from sbd_stream.service.build import build_pipeline
from sbd_stream.sinks.viewer.server import Viewer

pytestmark = pytest.mark.integration
KINDS = ("raw", "denoised", "llr")
DEADLINE_S = 30.0  # generous: a loaded 2-core machine; nothing here is a timing assertion


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _status(v_url: str) -> dict:
    return json.loads(_get(v_url + "api/status")[1])


def _await_subscriptions(sock: zmq.Socket, topics: set[bytes]) -> None:
    """Readiness, not a sleep: an XPUB reads each subscription as it arrives."""
    seen: set[bytes] = set()
    while not topics <= seen:
        assert sock.poll(20_000), f"subscriptions missing: {topics - seen}"
        msg = sock.recv()
        if msg[:1] == b"\x01":
            seen.add(msg[1:])


@pytest.fixture
def viewer() -> Iterator[tuple[Viewer, zmq.Socket, zmq.Socket]]:
    """A stand-alone viewer on a detector PUB (raw frames) and a service-like PUB (outputs)."""
    ctx = zmq.Context.instance()
    out, raw = ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)
    for s in (out, raw):
        s.linger = 0
        s.sndhwm = 100000
        s.bind("tcp://127.0.0.1:*")
    v = Viewer(
        ViewerSettings(port=0),
        output_endpoint=out.getsockopt_string(zmq.LAST_ENDPOINT),
        raw_endpoint=raw.getsockopt_string(zmq.LAST_ENDPOINT),
    ).start()
    try:
        _await_subscriptions(out, {b"series_start", b"denoised", b"llr"})
        _await_subscriptions(raw, {b"frame", b"series_start"})
        yield v, out, raw
    finally:
        v.close()
        out.close()
        raw.close()


def _lockstep(v: Viewer) -> Callable[[zmq.Socket, list, str | None], None]:
    """Send one message and wait until the viewer took it, so its receive HWM (4) never drops one:
    what is tested is what the viewer makes of a series, not what a slow subscriber loses."""

    def send(sock: zmq.Socket, parts: list, kind: str | None) -> None:
        before = v.store.received[kind] if kind else None
        mark = dict(v.store.series)
        sock.send_multipart(parts)
        if kind is None:  # a series_start: the viewer's "last series_start" changes to it
            assert wait_until(lambda: v.store.series != mark, DEADLINE_S), "series_start not received"
        else:
            assert wait_until(lambda: v.store.received[kind] > before, DEADLINE_S), f"{kind} not received"

    return send


def _send_series(
    v: Viewer,
    out: zmq.Socket,
    raw: zmq.Socket,
    acq: str,
    t_start: float,
    seqs: range,
    ts: Callable[[int], float],
    between: Callable[[], None] | None = None,
) -> None:
    """A series as a detector and the service would send it: ``series_start`` on both PUBs, then each
    frame raw, denoised and llr, the denoised one filled with its ``ts`` (to tell the series apart).
    ``between``: called after the ``series_start`` arrived, before the first frame."""
    send = _lockstep(v)
    send(raw, encode_series(TOPIC_SERIES_START, acq, t_start), None)
    # the service re-sends it on its output; 1 us later here only so that the wait can see it arrive
    send(out, encode_series(TOPIC_SERIES_START, acq, t_start + 1e-6), None)
    if between is not None:
        between()
    rng = np.random.default_rng(seqs.stop)
    for seq in seqs:
        send(raw, encode_frame(rng.poisson(0.45, (32, 24)).astype(np.uint16), acq, seq, ts(seq)), "raw")
        den = np.full((32, 24), ts(seq), np.float32)
        send(out, encode_frame(den, acq, seq, ts(seq), topic=TOPIC_DENOISED), "denoised")
        send(out, encode_frame(np.zeros((32, 24), np.float32), acq, seq, ts(seq), topic=TOPIC_LLR), "llr")


def _newest_is(v: Viewer, seq: int, ts: float) -> Callable[[], bool]:
    def check() -> bool:
        f = _status(v.url)["frames"]
        return all(f[k] is not None and f[k]["seq"] == seq and f[k]["time"]["ts"] == ts for k in KINDS)

    return check


@pytest.mark.timeout(120)
def test_a_new_series_start_of_the_same_acquisition_moves_newest_to_the_new_series(viewer) -> None:
    v, out, raw = viewer
    base = time.time() - 60.0  # sender stamps in the past: a real acquisition, timed on this clock
    old = lambda s: base + 0.01 + 0.05 * s  # noqa: E731
    new = lambda s: base + 5.01 + 0.05 * s  # noqa: E731
    _send_series(v, out, raw, "v", base, range(30), old)
    assert wait_until(_newest_is(v, 29, old(29)), DEADLINE_S)

    def old_frame_still_shown() -> None:
        """The new series_start is in, none of its frames yet: the old seq 29 is still the newest, and
        timed from its own series_start, not (negatively) from the new one."""
        f = _status(v.url)["frames"]
        for k in KINDS:
            assert f[k]["seq"] == 29, (k, f[k]["seq"])
            assert f[k]["time"]["since_start_s"] == pytest.approx(old(29) - base, abs=1e-3), (k, f[k]["time"])

    # the acquisition is re-armed: a new series_start of "v", frames 0-9
    _send_series(v, out, raw, "v", base + 5.0, range(10), new, old_frame_still_shown)
    ok = wait_until(_newest_is(v, 9, new(9)), DEADLINE_S)
    st = _status(v.url)
    got = {k: (st["frames"][k]["seq"], st["frames"][k]["time"]["ts"]) for k in KINDS}
    assert ok, f"newest is not the new series' seq 9 ({new(9)}): {got}"
    for k in KINDS:
        t = st["frames"][k]["time"]
        assert t["since_start_s"] == pytest.approx(new(9) - (base + 5.0), abs=1e-3)  # from its own start
        assert t["exposure_s"] == 0.0  # the wire default of a frame that states none, as sent
    # images: without seq the new series' newest; seq=N the current series' frame N, never the old one
    code, _, hdr = _get(v.url + "image/denoised.png")
    assert code == 200 and hdr["X-Seq"] == "9" and float(hdr["X-Ts"]) == pytest.approx(new(9), abs=1e-5)
    for k in KINDS:
        code, _, hdr = _get(v.url + f"image/{k}.png?seq=5")
        assert code == 200 and float(hdr["X-Ts"]) == pytest.approx(new(5), abs=1e-5), (k, hdr)
        code, body, _ = _get(v.url + f"image/{k}.png?seq=25")  # only the old series had it
        assert code == 404 and body.decode() == f"{k} frame 25 of v is not held (held: 0-9)"
    assert _get(v.url + "image/raw.png?seq=25&fallback=newest")[2]["X-Seq"] == "9"


@pytest.mark.timeout(120)
def test_a_series_whose_ts_count_from_its_start_is_told_apart_by_its_series_start(viewer) -> None:
    """A DECTRIS-style clock (``ts`` seconds from the series' start, docs/dectris.md): numbers and
    ``ts`` of the new series both repeat the old one's, so only the ``series_start`` tells them apart,
    and a frame stamped before its ``series_start`` has no time since it (null), never a negative one."""
    v, out, raw = viewer
    det = lambda s: 0.025 * s  # noqa: E731
    _send_series(v, out, raw, "d", time.time(), range(30), det)
    assert wait_until(_newest_is(v, 29, det(29)), DEADLINE_S)
    _send_series(v, out, raw, "d", time.time(), range(10), det)
    ok = wait_until(_newest_is(v, 9, det(9)), DEADLINE_S)
    st = _status(v.url)
    assert ok, {k: st["frames"][k]["seq"] for k in KINDS}
    assert all(st["frames"][k]["time"]["since_start_s"] is None for k in KINDS)
    code, body, _ = _get(v.url + "image/denoised.png?seq=20")
    assert code == 404 and body.decode() == "denoised frame 20 of d is not held (held: 0-9)"


@pytest.mark.timeout(240)
def test_the_service_viewer_follows_a_rearm_and_a_producer_restart(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """The real service with its in-process viewer: raw frames reach it by the ingest tap (which sees
    no series messages, but the service's restart verdict), outputs and ``series_start`` by its PUB.
    Run 1: frames 0-29; run 2: a new ``series_start``, 0-9; run 3: the producer restarts without one,
    0-4. Each time raw and denoised "newest" is the current run's last frame."""
    ctx = zmq.Context()
    det = ctx.socket(zmq.PUB)
    det.linger = 0
    det.bind("tcp://127.0.0.1:*")
    settings = load_settings(
        overrides={
            "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
            "ingest": {"endpoint": det.getsockopt_string(zmq.LAST_ENDPOINT), "mode": "connect"},
            "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000},
            "record": {"enabled": False},
            "denoise": {"batch_frames": 1, "batch_timeout_ms": 2.0, "policy": "lossless"},
            "metrics": {"port": 0},
            "viewer": {"enabled": True, "port": 0},
        }
    )
    pipe = build_pipeline(
        settings, Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir), context=ctx
    )
    pipe.start()
    try:
        v = pipe.viewer
        assert v is not None
        arr = np.zeros((64, 64), np.uint16)

        def probe_seen() -> int:
            s = v.store.newest("denoised")
            return s.header.seq if s is not None and s.header.acq == PROBE_ACQ else -1

        # the path detector -> service -> viewer is open once a probe came through as a denoised frame
        handshake(lambda i: det.send_multipart(encode_frame(arr, PROBE_ACQ, i, 0.0)), probe_seen, 60.0)
        rng = np.random.default_rng(3)
        base = time.time() - 60.0

        def run(start: float | None, n: int, first: int = 0) -> Callable[[int], float]:
            ts = lambda s: (start if start is not None else base + 40.0) + 0.01 + 0.05 * s  # noqa: E731
            if start is not None:
                det.send_multipart(encode_series(TOPIC_SERIES_START, "r", start))
            for seq in range(first, first + n):
                before = v.store.received["denoised"]
                det.send_multipart(
                    encode_frame(rng.poisson(0.45, (64, 64)).astype(np.uint16), "r", seq, ts(seq))
                )
                wait_until(lambda b=before: v.store.received["denoised"] > b, DEADLINE_S)  # paced: no drop
            return ts

        def newest(k: str) -> tuple[int, float] | None:
            s = v.store.newest(k)
            return (s.header.seq, s.header.ts) if s is not None else None

        ts1 = run(base, 30)
        assert wait_until(lambda: all(newest(k) == (29, ts1(29)) for k in ("raw", "denoised")), DEADLINE_S)
        ts2 = run(base + 20.0, 10)  # re-armed: a new series_start
        ok = wait_until(lambda: all(newest(k) == (9, ts2(9)) for k in ("raw", "denoised")), DEADLINE_S)
        assert ok, {k: newest(k) for k in ("raw", "denoised")}
        ts3 = run(None, 5)  # the producer restarts without series_start: seq 0 again, later ts
        ok = wait_until(lambda: all(newest(k) == (4, ts3(4)) for k in ("raw", "denoised")), DEADLINE_S)
        assert ok, {k: newest(k) for k in ("raw", "denoised")}
        st = _status(v.url)
        assert st["frames"]["denoised"]["seq"] == 4
        # timed from the latest series_start before it (run 3 sent none): never negative
        assert st["frames"]["denoised"]["time"]["since_start_s"] == pytest.approx(ts3(4) - (base + 20.0))
        code, body, _ = _get(v.url + "image/denoised.png?seq=7")  # run 2's, not the current run's
        assert code == 404 and body.decode() == "denoised frame 7 of r is not held (held: 0-4)"
        code, _, hdr = _get(v.url + "image/raw.png?seq=2")
        assert code == 200 and float(hdr["X-Ts"]) == pytest.approx(ts3(2), abs=1e-5)
        # run 4: re-armed with numbers from 1 and stamps before run 3's (a DECTRIS-style clock): neither
        # numbers nor ts tell it apart, only its series_start, which the raw tap now hears too (the raw
        # panel stayed on run 3's frame 4 before, the denoised one moved)
        ts4 = run(base + 10.0, 3, first=1)
        ok = wait_until(lambda: all(newest(k) == (3, ts4(3)) for k in ("raw", "denoised")), DEADLINE_S)
        assert ok, {k: newest(k) for k in ("raw", "denoised")}
        code, body, _ = _get(v.url + "image/raw.png?seq=4")  # run 3's frame 4 is gone from the raw ring
        assert code == 404 and body.decode() == "raw frame 4 of r is not held (held: 1-3)"
    finally:
        pipe.stop()
        det.close()
        ctx.term()
