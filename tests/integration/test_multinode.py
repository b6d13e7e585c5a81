"""Scale-out: two `serve` instances PULL from one PUSH source, `merge` puts their outputs back in order.

The acceptance test of docs/scale-out-nodes.md, for a DECTRIS stream v1 PUSH source (the simulator's
message builders over a real PUSH socket) and for wire format v1 (the emulator's PUSH mode): every
frame reaches the merged stream exactly once, in frame order, ``series_start`` first and
``series_end`` last, and each instance recorded only its own share (together: every frame once).
Both instances are in-process ``Pipeline``s with their own metrics, on the tiny test engine.
The last test runs the real `sbd-stream merge` command as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, free_port, handshake, stop_command, wait_until

from sbd_stream.config import ServiceSettings, load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import open_recording
from sbd_stream.merge import MergeService
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_LLR,
    TOPIC_SERIES_START,
    decode,
    encode_frame,
    encode_series,
)
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector
from sbd_stream.sinks.publisher import OutputItem
from sbd_stream.sources.dectris.sim import v1_series
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration

SHAPE = (48, 40)


def node_settings(root: Path, endpoint: str, inp: dict, likelihood: bool = False) -> ServiceSettings:
    """One `serve` instance: PULL-connects to the source, publishes on a free port, records in ``root``."""
    return load_settings(
        overrides={
            "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
            "ingest": {"endpoint": endpoint, "mode": "connect", "input": inp},
            "publish": {"endpoint": "tcp://127.0.0.1:*", "queue_frames": 256},
            "record": {"directory": str(root / "rec"), "min_free_bytes": 0},
            "denoise": {
                "batch_frames": 4,
                "batch_timeout_ms": 2.0,
                "policy": "lossless",  # every frame merged: one lane
                "likelihood": {"enabled": likelihood},
            },
            "metrics": {"enabled": False},
        }
    )


class Cluster:
    """Two pipelines, one merge on their outputs, one subscriber on the merged stream."""

    def __init__(self, tmp: Path, engine_dir: Path, endpoint: str, inp: dict, likelihood: bool = False):
        self.ctx = zmq.Context.instance()
        self.pipes = [
            build_pipeline(
                node_settings(tmp / f"node{i}", endpoint, inp, likelihood),
                Denoiser.load(engine="onnxruntime", engine_dir=engine_dir),
                context=self.ctx,
            )
            for i in range(2)
        ]
        for p in self.pipes:
            p.start()
        outs = [p.publisher.endpoint for p in self.pipes]  # type: ignore[union-attr]
        self.merge = MergeService(outs, "tcp://127.0.0.1:*", window=64, gap_timeout_s=1.5, context=self.ctx)
        self.col = Collector(self.merge.endpoint, context=self.ctx).start()
        self.open_paths()
        self.merge.start()

    def open_paths(self) -> None:
        """Readiness, not a sleep: PUB drops what it sends before a subscription arrives, so probe every
        hop open before the merge loop starts (the test still owns the merge's sockets): each instance's
        publisher to the merge's SUB (probes read and dropped here, so the merge never counts them), then
        the merge's PUB to the subscriber."""
        assert self.merge.pub is not None
        for p, sub in zip(self.pipes, self.merge.subs, strict=True):
            seen = [-1]

            def arrived(sub: zmq.Socket = sub, seen: list[int] = seen) -> int:
                while sub.poll(0):
                    msg = decode(sub.recv_multipart())
                    assert msg.header.acq == PROBE_ACQ, "only probes flow before the test sends frames"
                    seen[0] = max(seen[0], int(msg.header.meta["probe"]))
                return seen[0]

            def send(i: int, p=p) -> None:
                p.publisher.submit(OutputItem(TOPIC_SERIES_START, PROBE_ACQ, meta={"probe": i}))

            handshake(send, arrived)
        pub = self.merge.pub

        def probe_out(i: int) -> None:
            pub.send_multipart(encode_series(TOPIC_SERIES_START, PROBE_ACQ, 0.0, {"probe": i}))

        handshake(probe_out, lambda: self.col.probe_seen)

    def stop(self) -> None:
        self.col.close()
        self.merge.stop()
        self.merge.join(5.0)
        for p in self.pipes:
            p.stop()

    def recorded(self, acq: str, kind: str = "raw") -> list[list[int]]:
        """Frame numbers each instance recorded for ``acq`` (every part of its recording)."""
        out = []
        for p in self.pipes:
            seqs: list[int] = []
            for path in sorted(Path(p.settings.record.directory).glob(f"{acq}*.nxs")):
                with open_recording(path) as f:
                    seqs += [int(q) for q in f[f"{kind}/seq"][: len(f[f"{kind}/complete"])]]
            out.append(seqs)
        return out


def wait_peers(sock: zmq.Socket, mon: zmq.Socket, n: int, timeout: float = 10.0) -> None:
    """A bound PUSH socket: wait until ``n`` PULL peers completed their handshake (``mon``: its monitor)."""
    try:
        for _ in range(n):
            assert mon.poll(int(timeout * 1000)), "a PULL instance never connected"
            mon.recv_multipart()
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


def assert_merged_once_in_order(col: Collector, acq: str, n: int, topics: tuple[bytes, ...]) -> None:
    msgs = [m for m in col.messages if m.acq == acq]
    assert msgs[0].topic == b"series_start" and msgs[-1].topic == b"series_end"
    assert [m.topic for m in msgs].count(b"series_start") == 1
    assert [m.topic for m in msgs].count(b"series_end") == 1
    for t in topics:
        assert [m.seq for m in msgs if m.topic == t] == list(range(n)), t


def assert_shares_partition(shares: list[list[int]], n: int) -> None:
    assert all(shares), f"an instance got no frames: {[len(s) for s in shares]}"
    assert sorted(shares[0] + shares[1]) == list(range(n))  # every frame once, across instances
    assert not set(shares[0]) & set(shares[1])


@pytest.mark.timeout(120)
def test_two_instances_pull_one_dectris_push_source_and_merge_delivers_every_frame_once(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    n, series = 24, 7
    acq = f"dectris-{series}"
    ctx = zmq.Context.instance()
    dcu = ctx.socket(zmq.PUSH)  # a DCU binds PUSH; the instances connect PULL (their default)
    dcu.setsockopt(zmq.LINGER, 0)
    dcu.setsockopt(zmq.SNDHWM, 1000)
    dcu.bind("tcp://127.0.0.1:*")
    endpoint = dcu.getsockopt_string(zmq.LAST_ENDPOINT)
    mon = dcu.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)  # before the instances connect
    inp = {"dialect": "dectris-stream-v1", "series_timeout_s": 1.0}  # socket_type pull: the default
    cl = Cluster(tmp_path, tiny_engine_dir, endpoint, inp)
    try:
        wait_peers(dcu, mon, 2)
        rng = np.random.default_rng(3)
        data = [rng.poisson(0.45, SHAPE).astype(np.uint16) for _ in range(n)]
        for msg in v1_series(data, series):  # header+config, 24 images, end: round-robin over the two
            dcu.send_multipart(msg)
        assert cl.col.series_end.wait(30), "series_end never reached the merged stream"

        # the instance that missed the end closes the series on the inactivity timeout
        def ends() -> list[float]:
            return [p.metrics.value("sbd_series_messages_total", {"topic": "series_end"}) for p in cl.pipes]

        assert wait_until(lambda: ends() == [1, 1], 15), ends()
    finally:
        cl.stop()
        dcu.close(linger=0)
    assert_merged_once_in_order(cl.col, acq, n, (TOPIC_DENOISED,))
    ms = cl.merge.metrics
    assert ms.total("sbd_merge_gaps_total") == 0 and ms.total("sbd_merge_duplicates_total") == 0
    assert ms.total("sbd_merge_late_total") == 0
    assert ms.value("sbd_merge_series_dropped_total", {"topic": "series_start"}) == 1  # the joined one
    assert ms.value("sbd_merge_series_dropped_total", {"topic": "series_end"}) == 1  # the timeout one
    end = cl.col.messages[-1].header
    assert end.n_frames == n and end.meta["merge"]["missing"] == {"denoised": 0}
    # one instance had the header, the other joined mid-series (counted once, not per frame)
    joined = [p.metrics.value("sbd_dectris_series_joined_total") for p in cl.pipes]
    timeouts = [p.metrics.value("sbd_dectris_series_timeouts_total") for p in cl.pipes]
    assert sorted(joined) == [0, 1] and sum(timeouts) <= 1
    shares = cl.recorded(acq)
    assert_shares_partition(shares, n)
    assert [sorted(s) for s in cl.recorded(acq, "denoised")] == [sorted(s) for s in shares]
    for p, share in zip(cl.pipes, shares, strict=True):  # each share is exactly what was sent
        with open_recording(next(Path(p.settings.record.directory).glob(f"{acq}*.nxs"))) as f:
            assert f.attrs["pixel_size_A"] == 0.3  # the joined instance too: sampling from its settings
            for row, q in enumerate(share):
                np.testing.assert_array_equal(f["raw/frames"][row], data[q])
    # the merged frames are the instances' denoised frames, untouched
    den = {m.seq: m.data for m in cl.col.frames(TOPIC_DENOISED)}
    for p, share in zip(cl.pipes, shares, strict=True):
        with open_recording(next(Path(p.settings.record.directory).glob(f"{acq}*.nxs"))) as f:
            for row, q in enumerate(f["denoised/seq"][:]):
                np.testing.assert_array_equal(f["denoised/frames"][row], den[int(q)].astype(np.float16))
            assert set(int(q) for q in f["denoised/seq"][:]) == set(share)


@pytest.mark.timeout(120)
def test_two_instances_pull_the_wire_v1_emulator_in_push_mode_and_merge_delivers_every_frame_once(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    n = 30
    emu = Emulator(
        EmulatorSettings(
            endpoint="tcp://127.0.0.1:*", shape=SHAPE, n_frames=n, rate_hz=200, push=True, peers=2,
            keep_truth=True, wait_subscriber_s=10.0,
        )
    )  # fmt: skip
    cl = Cluster(tmp_path, tiny_engine_dir, emu.endpoint, {"dialect": "wire-v1", "socket_type": "pull"}, True)
    try:
        assert all(p.source.sock.type == zmq.PULL for p in cl.pipes)
        emu.start()  # waits for both PULL peers, then PUSHes round-robin
        assert cl.col.series_end.wait(30), "series_end never reached the merged stream"
        emu.join(5)
        assert emu.n_sent == n
    finally:
        emu.close()
        cl.stop()
    acq = emu.cfg.acq
    assert_merged_once_in_order(cl.col, acq, n, (TOPIC_DENOISED, TOPIC_LLR))
    ms = cl.merge.metrics
    assert ms.total("sbd_merge_gaps_total") == 0 and ms.total("sbd_merge_duplicates_total") == 0
    assert ms.value("sbd_merge_frames_total", {"topic": "llr"}) == n
    # series_start and series_end each reached one instance only (PUSH sends a message to one peer)
    starts = [p.metrics.value("sbd_series_messages_total", {"topic": "series_start"}) for p in cl.pipes]
    ends = [p.metrics.value("sbd_series_messages_total", {"topic": "series_end"}) for p in cl.pipes]
    assert sum(starts) == 1 and sum(ends) == 1
    shares = cl.recorded(acq)
    assert_shares_partition(shares, n)
    for p, share in zip(cl.pipes, shares, strict=True):
        with open_recording(next(Path(p.settings.record.directory).glob(f"{acq}*.nxs"))) as f:
            for row, q in enumerate(share):
                np.testing.assert_array_equal(f["raw/frames"][row], emu.sent[q])
        assert p.metrics.value("sbd_frames_received_total") == len(share)


def _free_port() -> int:
    """conftest.free_port: drawn outside the kernel's ephemeral range and checked on every address."""
    return free_port()


@pytest.mark.timeout(90)
def test_merge_command_reorders_two_publishers_reports_a_gap_and_prints_a_summary() -> None:
    """`sbd-stream merge` as a subprocess between two fake instance publishers and a subscriber."""
    ctx = zmq.Context.instance()
    pubs = []
    for _ in range(2):
        s = ctx.socket(zmq.XPUB)  # a PUB that sees the merge's subscription arrive (readiness below)
        s.setsockopt(zmq.LINGER, 0)
        s.bind("tcp://127.0.0.1:*")
        pubs.append(s)
    out_ep = f"tcp://127.0.0.1:{_free_port()}"
    script = Path(sys.executable).with_name("sbd-stream")  # the console script: sbd_stream.cli:main
    entry = (
        [str(script)] if script.exists() else [sys.executable, "-c", "from sbd_stream.cli import app; app()"]
    )
    cmd = [*entry, "merge", "--gap-timeout", "0.5", "--output", out_ep]
    for s in pubs:
        cmd += ["--input", s.getsockopt_string(zmq.LAST_ENDPOINT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(out_ep)
    got: list = []
    try:
        assert proc.stderr is not None
        line = ""
        while "merging" not in line:  # the command says where it is once its sockets are up
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"merge exited early: {proc.returncode}"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining the log
        for s in pubs:  # readiness, not a sleep: each input's subscription has reached its publisher
            assert s.poll(20_000), "merge never subscribed to an input"
            s.recv_multipart()
        seen = [-1]

        def arrived() -> int:
            while sub.poll(0):
                m = decode(sub.recv_multipart())
                assert m.header.acq.startswith(PROBE_ACQ), "only probes flow before the series"
                seen[0] = max(seen[0], int(m.header.meta["probe"]))
            return seen[0]

        # and the output path: probes through the merge (each its own acquisition: the merge forwards one
        # series_start per acquisition) until the subscriber has the last one sent
        probes = handshake(
            lambda i: pubs[0].send_multipart(
                encode_series(b"series_start", f"{PROBE_ACQ}-{i}", 1.0, {"probe": i})
            ),
            arrived,
        )
        frame = lambda q: encode_frame(np.full((4, 3), q, np.float32), "acq-1", q, 1.0, topic=TOPIC_DENOISED)  # noqa: E731
        pubs[0].send_multipart(encode_series(b"series_start", "acq-1", 1.0, {}))
        for q in (1, 3, 7):  # instance 1's share
            pubs[1].send_multipart(frame(q))
        for q in (0, 2, 4, 6):  # instance 0's share; 5 never comes
            pubs[0].send_multipart(frame(q))
        pubs[0].send_multipart(encode_series(b"series_end", "acq-1", 2.0, {}))
        while sub.poll(5000):
            msg = decode(sub.recv_multipart())
            got.append(msg)
            if msg.topic == b"series_end":
                break
    finally:
        stdout = stop_command(proc)
        sub.close(linger=0)
        for s in pubs:
            s.close(linger=0)
    assert got[0].topic == b"series_start" and got[-1].topic == b"series_end"
    assert [m.header.seq for m in got[1:-1]] == [0, 1, 2, 3, 4, 6, 7]
    assert got[-1].header.meta["merge"]["missing"] == {"denoised": 1}
    assert proc.returncode == 0
    summary = json.loads(stdout)
    assert summary["frames"]["denoised"] == 7 and summary["gaps"] == 1 and summary["missing"] == 1
    assert summary["received"] == 9 + probes and summary["duplicates"] == 0


def test_cli_socket_type_alone_keeps_the_dialect_and_emulate_has_a_push_mode(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sbd_stream.cli import app
    from sbd_stream.cli.options import ingest_input as _ingest_input
    from sbd_stream.cli.options import input_dialect as _input_dialect
    from sbd_stream.cli.options import service_settings as _service_settings

    def inp(config: Path | None, socket_type: str) -> object:
        dialect = _input_dialect(config, None, socket_type)
        return _service_settings(
            config, {"ingest": {"input": _ingest_input(dialect, socket_type, None)}}
        ).ingest.input

    wire = inp(None, "pull")  # `serve --socket-type pull`: wire format v1 (the default dialect) over PULL
    assert (wire.dialect, wire.socket_type) == ("wire-v1", "pull")  # type: ignore[attr-defined]
    toml = tmp_path / "service.toml"
    toml.write_text('[ingest.input]\ndialect = "dectris-stream-v2"\n')
    dec = inp(toml, "sub")  # the file's dialect is kept
    assert (dec.dialect, dec.socket_type) == ("dectris-stream-v2", "sub")  # type: ignore[attr-defined]
    out = CliRunner().invoke(app, ["emulate", "--help"], env={"COLUMNS": "200"}).output
    assert all(flag in out for flag in ("--push", "--peers", "--sndhwm"))
    out = CliRunner().invoke(app, ["merge", "--help"], env={"COLUMNS": "200"}).output
    assert all(flag in out for flag in ("--input", "--output", "--gap-timeout", "--window", "--metrics-port"))
