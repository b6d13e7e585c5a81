"""Evidence frames kept per acquisition, shared by every engine worker (``compute/evidence.py`` says why).

The batch stage is pure: it scores a frame's columns on the evidence frames it is handed. Which frames
those are is decided here, once, **when the frame is received** (``keep``, called by the intake in
arrival order, before the frame can be queued): frame ``seq`` of an acquisition is scored on the
frames of the same acquisition and series with sequence numbers ``seq - N ... seq - 1`` that the
service received before it, whether they are later denoised live, skipped, completed by the complete
lane or never denoised; never on later frames. Fewer only at a series' start, across frames never
received, or for an acquisition forgotten by the bounds below. Why at receipt: the frames a worker
happened to have at hand (the other frames of its batch, the live lane's frames) depended on timing,
batching and the lane, so the same frame of the same stream got maps differing by up to 2.5x between
a paced and a burst run, ``--no-live --batch 4`` and a ``replay`` of the recording (audit 23). Decided
from the arrival order alone, a replay of a recording reproduces the live maps, and 1 or N workers
score a frame alike.

The decision is a tuple of references per waiting frame (``each`` hands it to the worker that scores
the frame, in either lane), kept until it is taken or the frame is dropped (a ``weakref.finalize`` on
the queued frame: overflow, a skipped frame without a complete lane, one left for offline). It holds
the evidence frames' arrays (no copy), not the frames themselves, so one waiting frame never keeps
the decisions of others alive. The complete lane's backlog counts the evidence arrays its frames hold
against ``lanes.backlog_mb`` (``service/backlog.py``).

How many acquisitions: the frames kept are memory held on purpose (the last ``2 N`` raw frames of each,
for frames that arrive slightly out of order: 4 MB for 1024 x 1024 uint16 at N = 1, 128 MB for float32
at N = 16). A bound of 8 acquisitions made 20 interleaved ones (A0 B0 ... T0 A1 ...) all fall back to
single-frame scoring, silently: each frame's acquisition had been forgotten by the time its next frame
came. So the ``MIN_ACQS`` most recent are kept whatever their size (the old bound, the old worst case),
and more, up to ``MAX_ACQS``, while all kept frames together stay within ``BUDGET_BYTES`` (256 x 256
uint8 frames at N = 2: 1024 acquisitions take 256 MiB; at N = 16, 128; 1024 x 1024 uint16 at N = 4: 16).
An acquisition whose kept frames were forgotten that way while it still sends is logged (rate-limited):
its next frames are scored on fewer frames (``meta.evidence_frames`` says how many).
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
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

Evidence = tuple[Frame, ...]
"""A frame's evidence frames, nearest first (light copies sharing the received arrays)."""


class EvidenceHistory:
    """The last ``2 n`` raw frames of each recent acquisition, and each waiting frame's evidence.

    ``keep`` (at receipt) decides a frame's evidence; ``each`` (when a worker scores it) hands it over.
    """

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
        # receive number -> evidence of a frame kept and not yet taken. Plain dict operations only where
        # a finalizer may run (any thread, at any allocation): a lock there could be the caller's own
        self._waiting: dict[int, Evidence] = {}
        self._said = RateLimitedLog(log)
        self._lock = threading.Lock()

    def forget(self, acq: str) -> None:
        """A new series of ``acq`` begins (its ``series_start``, at receipt): its numbering starts again
        at 0, so the kept frames of the series before are another specimen state and must not score the
        new one (they did: seq 1 of a new series was scored on seq 0 of the old one, LLR -3 instead of
        +10). Frames of the old series still waiting keep the evidence decided when they arrived."""
        with self._lock:
            self._drop(acq)
            self._forgotten.pop(acq, None)  # a new series: nothing of it was lost to the bound

    def _drop(self, acq: str) -> None:
        if self._acqs.pop(acq, None) is not None:
            self.kept_bytes -= self._bytes.pop(acq)

    def keep(self, frame: Frame) -> Evidence:
        """At receipt, in arrival order: decide ``frame``'s evidence and keep the frame for later ones.

        A frame with a receive number (``FrameHeader.rx``, the intake's) waits with its evidence until
        ``each``; a frame that restarts its acquisition's numbering without a ``series_start`` (a sender
        that came back, ``Frame.seq_restart``) forgets what was kept of it first, as ``forget`` does.
        """
        with self._lock:
            if frame.seq_restart:
                self._drop(frame.header.acq)
                self._forgotten.pop(frame.header.acq, None)
            ev = self._evidence(frame)
            self._keep(frame)
            rx = frame.header.rx
            if rx >= 0:
                self._waiting[rx] = ev
                weakref.finalize(frame, self._waiting.pop, rx, None).atexit = False
        return ev

    def peek(self, frame: Frame) -> Evidence:
        """The evidence decided for a waiting ``frame`` (empty if none): the backlog counts its bytes."""
        return self._waiting.get(frame.header.rx, ()) if frame.header.rx >= 0 else ()

    def each(self, frames: Sequence[Frame]) -> list[Evidence]:
        """Each frame's evidence, decided by ``keep`` at its receipt; handed over once.

        A frame without a receive number (one that did not come through an intake: tests, benchmarks)
        is kept now, so frames handed in one at a time in sequence order get the same evidence as at
        receipt. One handed over before is looked up again, not kept twice.
        """
        out: list[Evidence] = []
        for f in frames:
            rx = f.header.rx
            if rx < 0:
                out.append(self.keep(f))
            elif (ev := self._waiting.pop(rx, None)) is not None:
                out.append(ev)
            else:
                with self._lock:
                    out.append(self._evidence(f))
        return out

    def take(self, frames: Sequence[Frame]) -> list[Frame]:
        """``each``'s frames in one list, oldest first: ``BatchStage.process(frames, earlier)`` finds
        every frame's own among them by (acq, seq), as ``each`` decided."""
        seen: dict[int, Frame] = {}
        for ev in self.each(frames):
            seen.update((id(e), e) for e in ev)
        return sorted(seen.values(), key=lambda k: (k.header.acq, k.header.seq))

    def _evidence(self, f: Frame) -> Evidence:
        """Kept frames ``seq - n ... seq - 1`` of ``f``'s acquisition, shape and dtype, nearest first
        (of a sequence number received twice, the later)."""
        h, got = f.header, {}
        for k in self._acqs.get(h.acq, ()):
            alike = k.data.shape == f.data.shape and k.data.dtype == f.data.dtype
            if alike and 0 < h.seq - k.header.seq <= self.n:
                got[k.header.seq] = k
        return tuple(got[q] for q in sorted(got, reverse=True))

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
        kept.append(Frame(f.header, f.data, f.t_recv))  # a light copy: the finalizer watches ``f`` alone
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
