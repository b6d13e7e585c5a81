"""Evidence frames kept per acquisition, shared by every engine worker (``compute/evidence.py`` says why).

The batch stage is pure: it scores a frame's columns on the other frames it is handed. Which earlier
frames those are is decided here, once, in queue order: the worker pool calls ``take`` under the lock
that hands out batches, so with 1 or with N workers every batch gets the same earlier frames and the
likelihood maps do not depend on which worker took which batch. Kept are the raw frames as received
(references, no copy): the last ``2 N`` of each of the most recently active acquisitions.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from sbd_stream.frames import Frame

MAX_ACQS = 8
"""Acquisitions with kept frames; past this the least recently active one is forgotten."""


class EvidenceHistory:
    """The last ``2 n`` raw frames of each recent acquisition; ``take`` hands a batch its earlier ones."""

    def __init__(self, n: int, max_acqs: int = MAX_ACQS) -> None:
        if n < 1:
            raise ValueError(f"evidence frames must be >= 1, got {n}")
        self.n, self.max_acqs = n, max_acqs
        self._acqs: collections.OrderedDict[str, collections.deque[Frame]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def forget(self, acq: str) -> None:
        """A new series of ``acq`` begins (its ``series_start``): its numbering starts again at 0, so the
        kept frames of the series before are another specimen state and must not score the new one
        (they did: seq 1 of a new series was scored on seq 0 of the old one, LLR -3 instead of +10)."""
        with self._lock:
            self._acqs.pop(acq, None)

    def take(self, frames: Sequence[Frame]) -> list[Frame]:
        """Kept frames that may score ``frames`` (same acquisition, shape and dtype, at most ``2 n``
        sequence numbers earlier), oldest first; then ``frames`` are kept. Call in queue order.

        A frame that restarts its acquisition's numbering without a ``series_start`` (a sender that
        came back, ``Frame.seq_restart``) forgets what was kept of it first, as ``forget`` does."""
        with self._lock:
            for f in frames:
                if f.seq_restart:
                    self._acqs.pop(f.header.acq, None)
            ids = {(f.header.acq, f.header.seq) for f in frames}
            out: list[Frame] = []
            seen: set[tuple[str, int]] = set()
            for f in frames:
                h = f.header
                for k in self._acqs.get(h.acq, ()):
                    key = (k.header.acq, k.header.seq)
                    if key in ids or key in seen or not 0 < h.seq - k.header.seq <= 2 * self.n:
                        continue
                    if k.data.shape == f.data.shape and k.data.dtype == f.data.dtype:
                        seen.add(key)
                        out.append(k)
            for f in frames:
                kept = self._acqs.get(f.header.acq)
                if kept is None:
                    kept = self._acqs[f.header.acq] = collections.deque(maxlen=2 * self.n)
                    while len(self._acqs) > self.max_acqs:
                        self._acqs.popitem(last=False)
                self._acqs.move_to_end(f.header.acq)
                kept.append(f)
            out.sort(key=lambda k: (k.header.acq, k.header.seq))
            return out
