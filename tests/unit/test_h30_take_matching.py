"""``FrameQueue.take_matching`` (the recorder's one-acquisition batches): at most ``limit`` matching items,
oldest first; every other item stays, in its order; the byte account follows what was taken."""

from __future__ import annotations

from sbd_stream.frames import FrameQueue


def _queue(items: list[str]) -> FrameQueue:
    q = FrameQueue(100, max_bytes=10_000)
    for i, it in enumerate(items):
        assert q.put(it, nbytes=10 * (i + 1))
    return q


def test_takes_up_to_the_limit_oldest_first_and_keeps_the_rest_in_order() -> None:
    q = _queue(["a1", "b1", "a2", "a3", "b2", "a4"])
    assert q.take_matching(lambda it: str(it).startswith("a"), 2) == ["a1", "a2"]
    rest = [q.get_nowait() for _ in range(len(q))]
    assert rest == ["b1", "a3", "b2", "a4"]


def test_bytes_follow_and_a_limit_of_zero_or_no_match_takes_nothing() -> None:
    q = _queue(["a1", "b1", "a2"])  # 10 + 20 + 30 bytes
    assert q.take_matching(lambda it: True, 0) == []
    assert q.take_matching(lambda it: it == "c", 5) == [] and len(q) == 3
    assert q.take_matching(lambda it: str(it).startswith("a"), 5) == ["a1", "a2"]
    assert len(q) == 1 and q._bytes == 20  # only b1's left
