"""Evidence frames are decided when a frame is received, not when a worker gets to it (audit 23).

Before, a frame was scored on the frames the live lane had taken before its batch plus its batch-mates
(later frames included): frames the live lane skipped were never kept, the complete lane scored on
batch-mates only, and a paced run, a burst and a replay gave the same frame different maps. Now the
intake decides, in arrival order, that frame ``seq`` is scored on the frames ``seq - N ... seq - 1``
received before it, and the worker that scores it (either lane, any order) is handed exactly those.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_START, FrameHeader, SeriesHeader, SeriesMessage
from sbd_stream.service.backlog import Backlog
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.service.pipeline import Intake


def _frame(seq: int, acq: str = "a", side: int = 8) -> Frame:
    data = np.full((side, side), seq, np.uint16)
    return Frame(FrameHeader(acq, seq, 1000.0 + seq, (side, side), "uint16"), data)


def _seqs(ev: tuple[Frame, ...]) -> list[int]:
    return [e.header.seq for e in ev]


def _received(n: int, history: EvidenceHistory, queue_frames: int = 64) -> tuple[Intake, list[Frame]]:
    """``n`` frames of one series through a real intake (receive numbers, replaced pixels, queue)."""
    intake = Intake(FrameQueue(queue_frames), [], Metrics())
    intake.evidence = history
    intake.series(SeriesMessage(TOPIC_SERIES_START, SeriesHeader("a", time.time())))
    for q in range(n):
        intake.frame(_frame(q))
    out = []
    while (it := intake.queue.get_nowait()) is not None:
        if isinstance(it, Frame):
            out.append(it)
    return intake, out


def test_each_frame_gets_the_frames_before_it_whatever_order_they_are_scored_in() -> None:
    history = EvidenceHistory(2)
    _, frames = _received(6, history)
    # the live lane takes the newest, the complete lane the skipped ones later, in batches
    got = {f.header.seq: _seqs(ev) for f, ev in zip([frames[5]], history.each([frames[5]]), strict=True)}
    batch = [frames[0], frames[1], frames[2], frames[3]]
    got.update({f.header.seq: _seqs(ev) for f, ev in zip(batch, history.each(batch), strict=True)})
    got.update({4: _seqs(history.each([frames[4]])[0])})
    assert got == {0: [], 1: [0], 2: [1, 0], 3: [2, 1], 4: [3, 2], 5: [4, 3]}  # nearest first, never later
    assert not history._waiting  # each handed over once
    again = history.each([frames[5]])[0]  # asked again: looked up, not kept a second time
    assert _seqs(again) == [4, 3] and not history._waiting
    assert again[0].data is frames[4].data  # the received arrays themselves, no copy of the pixels


def test_a_frame_the_queue_refused_is_still_evidence_for_the_next() -> None:
    history = EvidenceHistory(2)
    intake, queued = _received(3, history, queue_frames=3)  # series_start, 0, 1: seq 2 overflows
    assert [f.header.seq for f in queued] == [0, 1]
    intake.frame(_frame(3))
    nxt = intake.queue.get_nowait()
    assert isinstance(nxt, Frame) and nxt.header.seq == 3
    assert _seqs(history.each([nxt])[0]) == [2, 1]  # received, so it counts, denoised or not


def test_a_series_start_at_receipt_forgets_the_old_series_for_later_frames_only() -> None:
    history = EvidenceHistory(2)
    intake, _ = _received(0, history)
    for q in range(3):
        intake.frame(_frame(q))
    intake.series(SeriesMessage(TOPIC_SERIES_START, SeriesHeader("a", time.time())))
    for q in range(2):
        intake.frame(_frame(q))
    items = []
    while (it := intake.queue.get_nowait()) is not None:
        if isinstance(it, Frame):
            items.append(it)
    old, new = items[:3], items[3:]
    ev_new = history.each(new)
    assert [_seqs(ev) for ev in ev_new] == [[], [0]]
    assert ev_new[1][0].data is new[0].data  # the new series' own seq 0, not the old one's
    # a waiting frame of the old series keeps what was decided when it came
    assert [_seqs(ev) for ev in history.each(old)] == [[], [0], [1, 0]]


def test_a_dropped_frame_leaves_nothing_waiting() -> None:
    history = EvidenceHistory(2)
    intake, frames = _received(4, history)
    assert len(history._waiting) == 4
    del frames
    gc.collect()
    assert not history._waiting, "the evidence of frames nobody will score must not be kept"
    assert len(intake.queue) == 0


def test_the_backlog_counts_the_evidence_its_frames_keep_alive() -> None:
    """A backlog of every other frame holds the live lane's frames too, as evidence: counted once."""
    history = EvidenceHistory(2)
    _, frames = _received(6, history)
    one = frames[0].data.nbytes
    bl = Backlog(10 * one)
    bl.evidence_of = history.peek
    bl.add([frames[3]])  # its evidence, frames 2 and 1, were denoised live
    assert bl.nbytes == 3 * one
    bl.add([frames[5]])  # 5 and 4 new, 3 already held
    assert bl.nbytes == 5 * one
    tight = Backlog(2 * one)
    tight.evidence_of = history.peek
    tight.add([frames[4]])  # 3 frames' worth: left for offline
    assert len(tight) == 0 and tight.left == 1
    assert [f.header.seq for f in bl.take(8)] == [3, 5] and bl.nbytes == 0
