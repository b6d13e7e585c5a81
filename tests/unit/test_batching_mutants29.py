"""The batcher's bookkeeping around series markers pinned (mutation round h29, service/batching.py).

The existing tests (test_ingest.py, test_batch_shapes.py) read batches from a queue filled beforehand
and look at the batches only: whether ``idle`` sees an item held back behind a marker, in what order
the frames behind a marker are skipped relative to the series messages, and whether ``on_skip`` hears
of empty skips were free to change.
"""

from __future__ import annotations

import threading

import numpy as np

from sbd_stream.config import BackpressurePolicy
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.batching import Batcher


def _frame(seq: int, shape: tuple[int, int] = (4, 4)) -> Frame:
    return Frame(FrameHeader("a", seq, 0.0, shape, "uint16"), np.zeros(shape, np.uint16))


def _label(item: object) -> object:
    return item.header.seq if isinstance(item, Frame) else item


def test_an_item_held_back_behind_a_batch_keeps_the_batcher_busy() -> None:
    """A frame of another shape ends a lossless batch and is held for the next one: the queue is empty
    but the batcher is not idle (a stopping worker's loop ends once it is idle). Mutant: the held item
    not counted, a stop would have left it unprocessed."""
    q = FrameQueue(10)
    q.put(_frame(0))
    q.put(_frame(1, (8, 8)))
    b = Batcher(q, max_frames=4, timeout_ms=1, policy=BackpressurePolicy.lossless)
    assert [_label(f) for f in b.next_batch(0.01)] == [0]
    assert len(q) == 0 and not b.idle()
    assert [_label(f) for f in b.next_batch(0.01)] == [1]
    assert b.idle()


def test_latest_skips_each_series_frames_before_that_series_ends() -> None:
    """Under ``latest`` the frames queued behind a series message wait their turn after it; each call
    skips the older ones of its own run, so the complete lane (``on_skip``) gets a series' frames before
    the subscribers get its end. Mutant: the first item put behind the held ones, frame 2 was skipped
    only after ``end1`` went out."""
    q = FrameQueue(20)
    for item in [_frame(0), _frame(1), "end0", _frame(2), _frame(3), "end1", _frame(4)]:
        q.put(item)
    events: list[object] = []
    b = Batcher(
        q, max_frames=1, timeout_ms=1, policy=BackpressurePolicy.latest,
        on_skip=lambda frames: events.append(("skip", [f.header.seq for f in frames])),
    )  # fmt: skip
    while batch := b.next_batch(0.01):
        events.append([_label(it) for it in batch])
    assert events == [("skip", [0]), [1], ["end0"], ("skip", [2]), [3], ["end1"], [4]]
    assert b.idle()


def test_latest_tells_on_skip_only_when_it_skipped() -> None:
    """``on_skip`` hears of skipped frames, not of every batch. Mutant: called with an empty list."""
    q = FrameQueue(10)
    q.put(_frame(0))
    calls: list[list[Frame]] = []
    b = Batcher(q, max_frames=2, timeout_ms=1, policy=BackpressurePolicy.latest, on_skip=calls.append)
    assert [_label(f) for f in b.next_batch(0.01)] == [0]
    assert calls == []


def test_latest_keeps_the_newest_frames_of_one_shape_only() -> None:
    """The newest run of frames of the newest frame's shape, at most ``max_frames``; the older ones,
    other shape included, are skipped."""
    q = FrameQueue(10)
    for f in [_frame(0), _frame(1), _frame(2, (8, 8)), _frame(3), _frame(4)]:
        q.put(f)
    skipped: list[int] = []
    b = Batcher(
        q, max_frames=3, timeout_ms=1, policy=BackpressurePolicy.latest,
        on_skip=lambda frames: skipped.extend(f.header.seq for f in frames),
    )  # fmt: skip
    assert [_label(f) for f in b.next_batch(0.01)] == [3, 4]
    assert skipped == [0, 1, 2]


def test_lossless_waits_up_to_the_timeout_for_more_frames() -> None:
    """A frame that arrives within ``timeout_ms`` of the batch's first joins it (the engine runs fuller
    batches under a steady stream). The tests above queue every frame beforehand, so a batcher that
    never waited passed them. Mutants: no wait; the timeout read as microseconds."""
    q = FrameQueue(10)
    q.put(_frame(0))
    b = Batcher(q, max_frames=2, timeout_ms=10_000, policy=BackpressurePolicy.lossless)
    late = threading.Timer(0.05, q.put, args=(_frame(1),))
    late.start()
    try:
        assert [_label(f) for f in b.next_batch(0.01)] == [0, 1]
    finally:
        late.cancel()
