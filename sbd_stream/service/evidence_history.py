"""Evidence frames kept per acquisition, shared by every engine worker (``compute/evidence.py`` says why).

The batch stage is pure: it scores a frame's columns on the other frames it is handed. Which earlier
frames those are is decided here, once, in queue order: the worker pool calls ``take`` under the lock
that hands out batches, so with 1 or with N workers every batch gets the same earlier frames and the
likelihood maps do not depend on which worker took which batch. Kept are the raw frames as received
(references, no copy): the last ``2 N`` of each of the most recently active acquisitions.

How many acquisitions: the frames kept are memory held on purpose (``2 N`` raw frames each: 4 MB for
1024 x 1024 uint16 at N = 1, 128 MB for float32 at N = 16). A bound of 8 acquisitions made 20
interleaved ones (A0 B0 ... T0 A1 ...) all fall back to single-frame scoring, silently: each frame's
acquisition had been forgotten by the time its next frame came. So the ``MIN_ACQS`` most recent are
kept whatever their size (the old bound, the old worst case), and more, up to ``MAX_ACQS``, while all
kept frames together stay within ``BUDGET_BYTES`` (256 x 256 uint8 frames at N = 2: 1024 acquisitions
take 256 MiB; at N = 16, 128; 1024 x 1024 uint16 at N = 4: 16). An acquisition whose kept frames were
forgotten that way while it still sends is logged (rate-limited): its next frames are scored on fewer
frames (``meta.evidence_frames`` says how many).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

from sbd_stream.frames import Frame
from sbd_stream.log_limit import RateLimitedLog

__all__ = ["BUDGET_BYTES", "MAX_ACQS", "MIN_ACQS", "EvidenceHistory"]

log = logging.getLogger(__name__)

MIN_ACQS = 8
"""Acquisitions whose frames are kept whatever their size; past this ``BUDGET_BYTES`` applies."""
MAX_ACQS = 1024
"""Acquisitions with kept frames at most (a few hundred bytes each besides their frames, which
``BUDGET_BYTES`` bounds); past this the least recently active goes."""
BUDGET_BYTES = 256 << 20
"""Bytes of kept frames beyond which acquisitions past the ``MIN_ACQS`` most recent are forgotten."""
REMEMBER_FORGOTTEN = 1024
"""Forgotten acquisitions remembered, to say so when one of them sends again."""


class EvidenceHistory:
    """The last ``2 n`` raw frames of each recent acquisition; ``take`` hands a batch its earlier ones."""

    def __init__(
        self, n: int, max_acqs: int = MAX_ACQS, min_acqs: int = MIN_ACQS, budget_bytes: int = BUDGET_BYTES
    ) -> None:
        if n < 1:
            raise ValueError(f"evidence frames must be >= 1, got {n}")
        self.n, self.max_acqs, self.budget = n, max_acqs, budget_bytes
        self.min_acqs = max(1, min(min_acqs, max_acqs))  # the acquisition just kept is never the one to go
        self._acqs: collections.OrderedDict[str, collections.deque[Frame]] = collections.OrderedDict()
        self._bytes: dict[str, int] = {}  # kept bytes per acquisition
        self.kept_bytes = 0
        self._forgotten: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._said = RateLimitedLog(log)
        self._lock = threading.Lock()

    def forget(self, acq: str) -> None:
        """A new series of ``acq`` begins (its ``series_start``): its numbering starts again at 0, so the
        kept frames of the series before are another specimen state and must not score the new one
        (they did: seq 1 of a new series was scored on seq 0 of the old one, LLR -3 instead of +10)."""
        with self._lock:
            self._drop(acq)
            self._forgotten.pop(acq, None)  # a new series: nothing of it was lost to the bound

    def _drop(self, acq: str) -> None:
        if self._acqs.pop(acq, None) is not None:
            self.kept_bytes -= self._bytes.pop(acq)

    def take(self, frames: Sequence[Frame]) -> list[Frame]:
        """Kept frames that may score ``frames`` (same acquisition, shape and dtype, at most ``2 n``
        sequence numbers earlier), oldest first; then ``frames`` are kept. Call in queue order.

        A frame that restarts its acquisition's numbering without a ``series_start`` (a sender that
        came back, ``Frame.seq_restart``) forgets what was kept of it first, as ``forget`` does."""
        with self._lock:
            for f in frames:
                if f.seq_restart:
                    self._drop(f.header.acq)
                    self._forgotten.pop(f.header.acq, None)
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
                self._keep(f)
            out.sort(key=lambda k: (k.header.acq, k.header.seq))
            return out

    def _keep(self, f: Frame) -> None:
        acq = f.header.acq
        kept = self._acqs.get(acq)
        if kept is None:
            kept = self._acqs[acq] = collections.deque(maxlen=2 * self.n)
            self._bytes[acq] = 0
            if acq in self._forgotten:
                del self._forgotten[acq]
                self._said.log(
                    "forgotten",
                    logging.WARNING,
                    "frames scored without the kept frames of their acquisition",
                    "likelihood evidence: the kept frames of %s were forgotten while it still sends "
                    "(more than %d acquisitions interleaved, or their kept frames over %d MiB): frame %d "
                    "and the next are scored on fewer evidence frames (meta.evidence_frames says how many)",
                    acq,
                    self.max_acqs,
                    self.budget >> 20,
                    f.header.seq,
                )
        self._acqs.move_to_end(acq)
        if len(kept) == kept.maxlen:
            self._bytes[acq] -= int(kept[0].data.nbytes)
            self.kept_bytes -= int(kept[0].data.nbytes)
        kept.append(f)
        self._bytes[acq] += int(f.data.nbytes)
        self.kept_bytes += int(f.data.nbytes)
        while len(self._acqs) > self.max_acqs or (
            len(self._acqs) > self.min_acqs and self.kept_bytes > self.budget
        ):
            old = next(iter(self._acqs))  # the least recently active
            self._drop(old)
            self._forgotten[old] = None
            while len(self._forgotten) > REMEMBER_FORGOTTEN:
                self._forgotten.popitem(last=False)
