"""The complete lane's backlog: raw frames the live lane skipped, kept until the engine is free.

Why in memory and bounded: the live lane skips a frame only because a newer one is waiting, so during
an acquisition the engine is never free and the skipped frames pile up until the series ends (at 40 Hz
on a CPU that keeps up with half the rate, 20 frames a second). Holding them as received costs one
detector frame each (1 MiB for 1024 x 1024 uint8): a bounded budget (``lanes.backlog_mb``) keeps a
long acquisition from eating the host. A frame that does not fit, or that is still waiting when the
shutdown's time runs out, is *left for offline*: counted, and named once per acquisition in the log
with the command that completes it from the recording (``sbd-stream replay --offline``). Its raw frame
is recorded either way.

With likelihood evidence frames a waiting frame also holds its evidence (the up to N frames before it,
decided at receipt, ``service/evidence_history.py``), which may be frames the live lane denoised long
ago: without counting them a backlog of every tenth frame held up to N times its budget. So the budget
counts every distinct array the backlog keeps alive, its frames' and their evidence's (``evidence_of``,
set by the worker pool).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

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
        self._frames: collections.deque[tuple[Frame, list[np.ndarray]]] = collections.deque()
        self._held: dict[int, tuple[int, np.ndarray]] = {}  # id(array) -> (waiting frames holding it, it)
        self._bytes = 0
        self.evidence_of: Callable[[Frame], Sequence[Frame]] | None = None
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
                arrays = list({id(a): a for a in self._arrays(f)}.values())
                n = sum(a.nbytes for a in arrays if id(a) not in self._held)
                if self._bytes + n > self.max_bytes:
                    left.append(f)
                    continue
                for a in arrays:
                    self._held[id(a)] = (self._held.get(id(a), (0, a))[0] + 1, a)
                self._frames.append((f, arrays))
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
                f, arrays = self._frames[0]
                if out and (f.data.shape != out[0].data.shape or f.data.dtype != out[0].data.dtype):
                    break
                self._frames.popleft()
                self._release(arrays)
                out.append(f)
            depth = len(self._frames)
        if self._on_depth is not None and out:
            self._on_depth(depth)
        return out

    def abandon(self, why: str) -> int:
        """Leave everything still waiting for offline (shutdown out of time); returns how many."""
        with self._lock:
            left = [f for f, _ in self._frames]
            self._frames.clear()
            self._held.clear()
            self._bytes = 0
        if self._on_depth is not None:
            self._on_depth(0)
        if left:
            self._leave(left, why, at_stop=True)
        return len(left)

    def _arrays(self, f: Frame) -> list[np.ndarray]:
        """The arrays a waiting ``f`` keeps alive: its own and its evidence frames'."""
        ev = self.evidence_of(f) if self.evidence_of is not None else ()
        return [f.data, *(e.data for e in ev)]

    def _release(self, arrays: list[np.ndarray]) -> None:
        for a in arrays:
            n, _ = self._held[id(a)]
            if n > 1:
                self._held[id(a)] = (n - 1, a)
            else:
                del self._held[id(a)]
                self._bytes -= a.nbytes

    def _leave(self, frames: list[Frame], why: str, at_stop: bool = False) -> None:
        """Count ``frames`` as left for offline; a warning once per acquisition, and at a stop one line
        with the number (its acquisitions may have been named long before, when the backlog was full)."""
        self.left += len(frames)
        if self._on_left is not None:
            self._on_left(len(frames))
        if at_stop:
            acqs = ", ".join(sorted({f.header.acq for f in frames})[:8])
            msg = "stop: %d frames of %s waiting for the complete lane are left for offline (%s)"
            log.warning(msg, len(frames), acqs, why)
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
