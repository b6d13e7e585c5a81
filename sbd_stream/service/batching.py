"""Batching of queued frames for the denoiser, under the backpressure policy.

``lossless``: take frames oldest first, up to B or whatever arrived within T ms after the first.
``latest`` (the live lane): take the newest B frames that are waiting and hand the older ones to
``on_skip`` (counted, and kept for the complete lane, ``service/backlog.py``), so that under overload
the output tracks the microscope instead of falling further and further behind.
A batch never mixes frame shapes (the engine needs one shape per call). Series messages travel in the
same queue so that a ``series_end`` reaches subscribers after the last frame of its series; they are
never skipped and always come back as a batch of their own.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from sbd_stream.config import BackpressurePolicy
from sbd_stream.frames import Frame, FrameQueue

Item = object  # Frame or a series marker (anything that is not a Frame)


class Batcher:
    def __init__(
        self,
        queue: FrameQueue,
        max_frames: int,
        timeout_ms: float,
        policy: BackpressurePolicy,
        on_skip: Callable[[list[Frame]], None] | None = None,
    ) -> None:
        self.queue, self.max_frames, self.timeout_s = queue, max_frames, timeout_ms / 1000.0
        self.policy, self.on_skip = policy, on_skip
        self._pending: collections.deque[Item] = collections.deque()

    def idle(self) -> bool:
        return not self._pending and len(self.queue) == 0

    def _next(self, timeout: float | None) -> Item | None:
        if self._pending:
            return self._pending.popleft()
        if timeout is not None and timeout <= 0:
            return self.queue.get_nowait()
        return self.queue.get(timeout=timeout)

    @staticmethod
    def _compatible(a: Frame, b: Frame) -> bool:
        return a.header.shape == b.header.shape and a.header.dtype == b.header.dtype

    def next_batch(self, wait_s: float = 0.2) -> list[Item]:
        """Frames to denoise now, or ``[marker]``; empty when nothing arrived within ``wait_s``."""
        first = self._next(wait_s)
        if first is None:
            return []
        if not isinstance(first, Frame):
            return [first]
        if self.policy is BackpressurePolicy.latest:
            return self._latest(first)
        return self._lossless(first)

    def _lossless(self, first: Frame) -> list[Item]:
        batch: list[Item] = [first]
        deadline = time.perf_counter() + self.timeout_s
        while len(batch) < self.max_frames:
            nxt = self._next(deadline - time.perf_counter())
            if nxt is None:
                break
            if not isinstance(nxt, Frame) or not self._compatible(first, nxt):
                self._pending.appendleft(nxt)
                break
            batch.append(nxt)
        return batch

    def _latest(self, first: Frame) -> list[Item]:
        newest, older = self.queue.drain_newest(len(self.queue))
        items: list[Item] = [first, *self._pending, *older, *newest]  # oldest first
        self._pending.clear()
        cut = next((i for i, it in enumerate(items) if not isinstance(it, Frame)), len(items))
        frames, rest = items[:cut], items[cut:]
        self._pending.extend(rest)
        keep: list[Item] = []
        for f in reversed(frames):
            assert isinstance(f, Frame)
            if keep and not self._compatible(keep[0], f):  # type: ignore[arg-type]  # keep holds Frames only
                break
            keep.insert(0, f)
            if len(keep) == self.max_frames:
                break
        skipped = [f for f in frames[: len(frames) - len(keep)] if isinstance(f, Frame)]
        if skipped and self.on_skip is not None:
            self.on_skip(skipped)
        return keep
