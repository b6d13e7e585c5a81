"""The lossless batcher splits on frame shape and dtype by itself, with no series marker between.

batching.py: "A batch never mixes frame shapes (the engine needs one shape per call)". The engine stacks
a batch into one array: a batch with (4, 4) and (8, 8) frames cannot be stacked and those frames fail;
a uint16 and a uint8 frame would stack to the wider dtype, which the engine was not asked for.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.config import BackpressurePolicy
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.batching import Batcher


def _frame(seq: int, shape: tuple[int, int], dtype: str = "uint16") -> Frame:
    return Frame(FrameHeader("a", seq, 0.0, shape, dtype), np.zeros(shape, dtype))


def _batches(frames: list[Frame], max_frames: int) -> list[list[tuple[int, tuple[int, int], str]]]:
    q = FrameQueue(100)
    for f in frames:  # all queued before the batcher reads: no timing involved
        q.put(f)
    b = Batcher(q, max_frames=max_frames, timeout_ms=1, policy=BackpressurePolicy.lossless)
    out = []
    while batch := b.next_batch(0.01):
        out.append([(f.header.seq, f.header.shape, f.header.dtype) for f in batch])
    return out


@pytest.mark.parametrize("max_frames", [2, 8])
def test_back_to_back_frames_of_two_shapes_go_in_separate_batches(max_frames: int) -> None:
    frames = [_frame(0, (4, 4)), _frame(1, (4, 4)), _frame(2, (8, 8)), _frame(3, (8, 8)), _frame(4, (4, 4))]
    out = _batches(frames, max_frames)
    for batch in out:
        assert len({(shape, dt) for _, shape, dt in batch}) == 1, out
        assert len(batch) <= max_frames
    assert [seq for batch in out for seq, _, _ in batch] == [0, 1, 2, 3, 4]  # nothing lost, order kept
    if max_frames == 8:
        assert [[seq for seq, _, _ in batch] for batch in out] == [[0, 1], [2, 3], [4]]


def test_a_change_of_dtype_alone_splits_a_batch() -> None:
    out = _batches([_frame(0, (8, 8)), _frame(1, (8, 8), "uint8"), _frame(2, (8, 8), "uint8")], 8)
    assert [[seq for seq, _, _ in batch] for batch in out] == [[0], [1, 2]]
