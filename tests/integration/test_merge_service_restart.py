"""The merge service when a bridge restarts re-using an acquisition id, and when its inputs disagree.

Real ZeroMQ on loopback: two fake ``serve`` instances (PUB sockets sending wire format v1 outputs) feed a
running ``MergeService``; a ``Collector`` subscribes to the merged stream. The audit's repro: series X
(start, frames 0-9 over both instances, no end: the bridge crashed), then X again from seq 0 (with or
without a new start) and its end. The merge dropped the whole second series as duplicates.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq
from conftest import PROBE_ACQ, handshake, wait_until

from sbd_stream.merge import MergeService
from sbd_stream.merge.service import RECONNECT_IVL_MAX_MS
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    decode,
    encode_frame,
    encode_series,
)
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration

D, S, E = TOPIC_DENOISED, TOPIC_SERIES_START, TOPIC_SERIES_END
N = 10


class Merged:
    """Two instance publishers -> a running merge -> a subscriber, every hop probed open first."""

    def __init__(self, gap_timeout_s: float = 0.5, host: str = "127.0.0.1") -> None:
        self.ctx = zmq.Context.instance()
        self.pubs = []
        for _ in range(2):
            s = self.ctx.socket(zmq.PUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IPV6, host.startswith("["))
            s.bind(f"tcp://{host}:*")
            self.pubs.append(s)
        eps = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in self.pubs]
        self.merge = MergeService(eps, f"tcp://{host}:*", gap_timeout_s=gap_timeout_s, context=self.ctx)
        self.col = Collector(self.merge.endpoint, context=self.ctx).start()
        for pub, sub in zip(self.pubs, self.merge.subs, strict=True):  # probes read here, never merged
            seen = [-1]

            def arrived(sub: zmq.Socket = sub, seen: list[int] = seen) -> int:
                while sub.poll(0):
                    seen[0] = max(seen[0], int(decode(sub.recv_multipart()).header.meta["probe"]))
                return seen[0]

            def send(i: int, pub: zmq.Socket = pub) -> None:
                pub.send_multipart(encode_series(S, PROBE_ACQ, 0.0, {"probe": i}))

            handshake(send, arrived)
        out = self.merge.pub
        assert out is not None
        handshake(
            lambda i: out.send_multipart(encode_series(S, PROBE_ACQ, 0.0, {"probe": i})),
            lambda: self.col.probe_seen,
        )
        self.merge.start()

    def frame(self, i: int, acq: str, seq: int, ts: float, engine: str = "tiny@1/onnxruntime-fp32") -> None:
        data = np.full((4, 3), seq, np.float32)
        self.pubs[i].send_multipart(encode_frame(data, acq, seq, ts, topic=D, engine=engine))

    def series(self, i: int, topic: bytes, acq: str, ts: float) -> None:
        self.pubs[i].send_multipart(encode_series(topic, acq, ts, {}))

    def got(self, acq: str) -> list[tuple[str, int]]:
        return [(m.topic.decode(), m.seq) for m in list(self.col.messages) if m.acq == acq]

    def close(self) -> None:
        self.merge.stop()
        self.merge.join(5.0)
        self.col.close()
        for s in self.pubs:
            s.close(linger=0)


def _run_restart(with_start: bool) -> tuple[Merged, list[tuple[str, int]]]:
    m = Merged()
    t0 = time.time()
    try:
        m.series(0, S, "X", t0)
        for q in range(N):
            m.frame(q % 2, "X", q, t0 + 0.01 * (q + 1))
        assert wait_until(lambda: m.got("X").count(("denoised", N - 1)) == 1, 10), m.got("X")
        t1 = t0 + 5.0  # the bridge crashed (no series_end) and came back with the same id
        if with_start:
            m.series(1, S, "X", t1)
        for q in range(N):
            time.sleep(0.02)  # a bridge's pace: messages of two instances do not overtake each other
            m.frame(q % 2, "X", q, t1 + 0.01 * (q + 1))
        time.sleep(0.02)
        m.series(0, E, "X", t1 + 1.0)
        assert wait_until(lambda: m.got("X").count(("series_end", -1)) == 2, 10), m.got("X")
    finally:
        m.close()
    return m, m.got("X")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_start", [True, False], ids=["new-series-start", "no-series-start"])
def test_a_restarted_bridge_reusing_the_acquisition_id_is_merged_as_a_second_series(with_start: bool) -> None:
    m, got = _run_restart(with_start)
    frames = [("denoised", q) for q in range(N)]
    second = [("series_start", -1)] if with_start else []  # without one: forwarded after the gap timeout
    assert got == [("series_start", -1), *frames, ("series_end", -1), *second, *frames, ("series_end", -1)]
    ends = [msg.header for msg in m.col.messages if msg.acq == "X" and msg.topic == E]
    assert ends[0].meta["end_reason"] == "restarted" and ends[0].n_frames == N  # made up: none was sent
    assert ends[0].meta["merge"] == {"frames": {"denoised": N}, "missing": {"denoised": 0}}
    assert ends[1].n_frames == N and ends[1].meta["merge"]["missing"] == {"denoised": 0}
    ms = m.merge.metrics
    assert ms.total("sbd_merge_restarts_total") == 1
    assert ms.total("sbd_merge_duplicates_total") == 0 and ms.total("sbd_merge_late_total") == 0
    assert ms.value("sbd_merge_series_total", {"topic": "series_start"}) == (2 if with_start else 1)
    assert ms.value("sbd_merge_series_dropped_total", {"topic": "series_start"}) == 0


@pytest.mark.timeout(30)
def test_inputs_with_different_engines_are_warned_once_per_acquisition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nodes run with another model: the merged stream alternates engines, said once and counted."""
    svc = MergeService(
        ["tcp://127.0.0.1:1"], "tcp://127.0.0.1:*", gap_timeout_s=0.2, context=zmq.Context.instance()
    )
    try:
        with caplog.at_level(logging.WARNING, "sbd_stream.merge"):
            for acq in ("a", "b"):
                svc.handle(0, encode_series(S, acq, 1.0, {}))
                for q in range(6):
                    engine = f"{'big' if q % 2 else 'tiny'}@1/onnxruntime-fp32"
                    svc.handle(
                        q % 2,
                        [
                            bytes(p)
                            for p in encode_frame(
                                np.zeros((4, 3), np.float32), acq, q, 2.0 + q, topic=D, engine=engine
                            )
                        ],
                    )
            svc.handle(
                0,
                [
                    bytes(p)
                    for p in encode_frame(
                        np.zeros((4, 3), np.float32), "c", 0, 1.0, topic=D, engine="tiny@1/x"
                    )
                ],
            )
        lines = [r.getMessage() for r in caplog.records if "different engines" in r.getMessage()]
        assert len(lines) == 2 and "tiny@1/onnxruntime-fp32 (input 0)" in lines[0]
        assert "big@1/onnxruntime-fp32 (input 1)" in lines[0]
        assert svc.metrics.value("sbd_merge_engine_mismatch_total") == 2
        assert svc.summary(1.0)["engine_mismatch"] == 2
    finally:
        svc.close()


def test_the_merge_redials_a_restarted_instance_within_half_a_second() -> None:
    """Frames a restarted instance publishes before the merge's SUB is back are lost to the merge (they
    are in the instance's recording): the re-dial backoff is capped short so that window stays short."""
    svc = MergeService(
        ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], "tcp://127.0.0.1:*", context=zmq.Context.instance()
    )
    try:
        assert RECONNECT_IVL_MAX_MS <= 500
        assert [s.getsockopt(zmq.RECONNECT_IVL_MAX) for s in svc.subs] == [RECONNECT_IVL_MAX_MS] * 2
    finally:
        svc.close()
