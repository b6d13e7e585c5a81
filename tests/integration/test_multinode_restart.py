"""Scale-out: the PUSH bridge restarts re-using the acquisition id, with or without a new series_start.

Real in-process ``serve`` pipelines (tiny test engine) PULL from one real PUSH socket, record, publish;
the merge and a subscriber sit on their outputs (the acceptance set-up of ``test_multinode.py``). Only
one instance gets the new ``series_start`` (or the new seq 0); the audit found the others dropping their
whole share of the second series as duplicates (raw frames never recorded), or appending it to the
first series' part. Every instance must record each series in its own part, every frame once, and
the merged stream must carry both series in full.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import wait_until
from test_multinode import SHAPE, Cluster, node_settings, wait_peers

from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import open_recording
from sbd_stream.merge import MergeService
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_FRAME, encode_frame, encode_series
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration

N = 24  # frames per series


class Nodes(Cluster):
    """``n`` instances (``Cluster`` has two), one merge, one subscriber."""

    def __init__(self, tmp: Path, engine_dir: Path, endpoint: str, n: int) -> None:
        self.ctx = zmq.Context.instance()
        inp = {"dialect": "wire-v1", "socket_type": "pull"}
        den = Denoiser.load(engine="onnxruntime", engine_dir=engine_dir)
        self.pipes = [
            build_pipeline(node_settings(tmp / f"node{i}", endpoint, inp), den, context=self.ctx)
            for i in range(n)
        ]
        for p in self.pipes:
            p.start()
        outs = [p.publisher.endpoint for p in self.pipes]  # type: ignore[union-attr]
        self.merge = MergeService(outs, "tcp://127.0.0.1:*", window=64, gap_timeout_s=1.0, context=self.ctx)
        self.col = Collector(self.merge.endpoint, context=self.ctx).start()
        self.open_paths()
        self.merge.start()

    def parts(self, acq: str) -> list[list[list[int]]]:
        """Per instance, per part of its recording of ``acq`` (in order): the raw frame numbers."""
        out = []
        for p in self.pipes:
            per = []
            for path in sorted(Path(p.settings.record.directory).glob(f"{acq}*.nxs")):
                with open_recording(path) as f:
                    per.append([int(q) for q in f["raw/seq"][: len(f["raw/complete"])]])
            out.append(per)
        return out


def _series(push: zmq.Socket, acq: str, start: bool, end: bool) -> None:
    """One series at a bridge's pace; ``ts`` is the send time, as a bridge stamps its frames."""
    if start:
        push.send_multipart(encode_series(b"series_start", acq, time.time()))
    rng = np.random.default_rng(7)
    for q in range(N):
        frame = rng.poisson(0.45, SHAPE).astype(np.uint16)
        push.send_multipart(encode_frame(frame, acq, q, time.time(), topic=TOPIC_FRAME))
        time.sleep(0.01)
    if end:
        push.send_multipart(encode_series(b"series_end", acq, time.time(), n_frames=N))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("n_nodes", "new_start"), [(3, True), (2, False)], ids=["3-nodes-start", "2-nodes-no-start"]
)
def test_every_instance_records_the_restarted_series_apart_and_the_merge_carries_both(
    tmp_path: Path, tiny_engine_dir: Path, n_nodes: int, new_start: bool
) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)  # the bridge
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 1000)
    push.bind("tcp://127.0.0.1:*")
    mon = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    cl = Nodes(tmp_path, tiny_engine_dir, push.getsockopt_string(zmq.LAST_ENDPOINT), n_nodes)
    try:
        wait_peers(push, mon, n_nodes)
        _series(push, "X", start=True, end=False)  # the bridge crashed: no series_end
        assert wait_until(lambda: len(cl.col.frames(TOPIC_DENOISED)) == N, 30), len(
            cl.col.frames(TOPIC_DENOISED)
        )
        time.sleep(0.2)
        _series(push, "X", start=new_start, end=True)  # back, the same id, numbering from 0
        ends = lambda: [m for m in list(cl.col.messages) if m.topic == b"series_end"]  # noqa: E731
        assert wait_until(lambda: len(ends()) == 2, 30), [(m.topic, m.seq) for m in cl.col.messages]
    finally:
        cl.stop()
        push.close(linger=0)
    for i, p in enumerate(cl.pipes):
        assert p.metrics.value("sbd_frames_duplicate_total") == 0, f"node{i} dropped frames as duplicates"
        assert p.metrics.value("sbd_sequence_restarts_total") >= 1, f"node{i} saw no restart"
    parts = cl.parts("X")
    assert all(len(per) == 2 for per in parts), parts  # each instance: series 1, then series 2 apart
    for k in range(2):
        share = [q for per in parts for q in per[k]]
        assert sorted(share) == list(range(N)), (k, parts)  # every frame of each series, once
    got = [(m.topic.decode(), m.seq) for m in cl.col.messages]
    frames = [("denoised", q) for q in range(N)]
    second = [("series_start", -1)] if new_start else []
    assert got == [("series_start", -1), *frames, ("series_end", -1), *second, *frames, ("series_end", -1)]
    assert cl.merge.metrics.total("sbd_merge_restarts_total") == 1
    assert cl.merge.metrics.total("sbd_merge_frames_missing_total") == 0
