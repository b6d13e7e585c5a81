"""The complete lane's backlog: raw frames the live lane skipped, kept until the engine is free.

Why in memory and bounded: the live lane skips a frame only because a newer one is waiting, so during
an acquisition the engine is never free and the skipped frames pile up until the series ends (at 40 Hz
on a CPU that keeps up with half the rate, 20 frames a second). Holding them as received costs one
detector frame each (1 MiB for 1024 x 1024 uint8): a bounded budget (``lanes.backlog_mb``) keeps a
long acquisition from eating the host. A frame that does not fit, or that is still waiting when the
shutdown's time runs out, is *left for offline*: counted, and named once per acquisition in the log
with the command that completes it from the recording (``sbd-stream replay --offline``). Its raw frame
is recorded either way.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from sbd_stream.frames import Frame

log = logging.getLogger(__name__)

__all__ = ["Backlog"]


class Backlog:
    """A thread-safe FIFO of skipped frames under a byte budget."""

    def __init__(
        self,
        max_bytes: int,
        on_depth: Callable[[int], None] | None = None,
        on_left: Callable[[int], None] | None = None,
    ) -> None:
        self.max_bytes = int(max_bytes)
        self._frames: collections.deque[Frame] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_depth, self._on_left = on_depth, on_left
        self._warned: set[str] = set()
        self.added = 0
        self.left = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def add(self, frames: list[Frame]) -> None:
        """Keep ``frames`` (oldest first) for the complete lane, or leave them for offline if full."""
        left: list[Frame] = []
        with self._lock:
            for f in frames:
                n = f.data.nbytes
                if self._bytes + n > self.max_bytes:
                    left.append(f)
                    continue
                self._frames.append(f)
                self._bytes += n
                self.added += 1
            depth = len(self._frames)
        if self._on_depth is not None:
            self._on_depth(depth)
        if left:
            self._leave(left, "the complete lane's backlog is full (lanes.backlog_mb)")

    def take(self, max_frames: int) -> list[Frame]:
        """Up to ``max_frames`` of the oldest frames, all of one shape and dtype (one engine call)."""
        out: list[Frame] = []
        with self._lock:
            while self._frames and len(out) < max_frames:
                f = self._frames[0]
                if out and (f.data.shape != out[0].data.shape or f.data.dtype != out[0].data.dtype):
                    break
                out.append(self._frames.popleft())
                self._bytes -= f.data.nbytes
            depth = len(self._frames)
        if self._on_depth is not None and out:
            self._on_depth(depth)
        return out

    def abandon(self, why: str) -> int:
        """Leave everything still waiting for offline (shutdown out of time); returns how many."""
        with self._lock:
            left = list(self._frames)
            self._frames.clear()
            self._bytes = 0
        if self._on_depth is not None:
            self._on_depth(0)
        if left:
            self._leave(left, why)
        return len(left)

    def _leave(self, frames: list[Frame], why: str) -> None:
        self.left += len(frames)
        if self._on_left is not None:
            self._on_left(len(frames))
        for acq in sorted({f.header.acq for f in frames}):
            if acq in self._warned:
                continue
            self._warned.add(acq)
            log.warning(
                "complete lane: frames of %r not denoised live are left for offline (%s); their raw frames "
                "are recorded: `sbd-stream replay --offline RECORDING --out OUT.h5` denoises them",
                acq,
                why,
            )
