"""The one frame type that travels through the service, and the bounded queues between its threads.

A ``Frame`` is created once by a source (the receiver, a file replay) and is what every stage sees:
the batcher groups frames, the batch stage denoises them, the recorder stores ``data`` (or, for
DECTRIS bitshuffle-LZ4 frames, ``chunk`` as it came off the wire), the publisher names outputs by
``header.acq`` / ``header.seq``. Keeping it in a module of its own means the pure stages and the sinks
never import socket code.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbd_stream.protocol import MAX_SIDE, FrameHeader, SeriesMessage

__all__ = [
    "MAX_OUTPUT_BYTES",
    "RESERVED_META",
    "SERVICE_META_KEYS",
    "Frame",
    "FrameHandler",
    "FrameHeader",
    "FrameQueue",
    "SeriesHandler",
    "SeriesMessage",
    "own_keys_renamed",
]

MAX_OUTPUT_BYTES = MAX_SIDE**2 * 4
"""The largest payload the publisher sends (``protocol.encode_frame``'s bound, written out there: protocol
sits below this module): any v1 frame as float32, 16384^2 x 4 bytes = 1 GiB. An output is float32, up to
4x its input, so the service's own subscribers (the demo's ``Collector``, the viewer) take this much: with
the input's 57 MB default a 4096^2 demo counted every output malformed (audit h30 follow-up)."""
SERVICE_META_KEYS = frozenset(
    {
        "n_columns", "columns_fields", "evidence_frames", "vacuum_counts",  # llr_table.llr_columns: every llr
        "nonfinite_pixels", "saturated_pixels", "hot_pixels", "bright_pixels",  # service/edge.py, at ingest
        "blank", "vacuum_not_flat",  # service/frame_flags.py, the batch stage
        "replay_of",  # sources/replay.py, on a replayed series_start
    }
)  # fmt: skip
"""The keys the service itself adds to an output's ``meta``. One home, below sources and sinks (which
never import each other): the publisher keeps them when a producer's meta must go (a header over 64 KiB),
every input renames a producer's key of the same name (``RESERVED_META``, ``own_keys_renamed``)."""
RESERVED_META = SERVICE_META_KEYS | {"meta_dropped"}
"""``meta`` keys a reader of the outputs takes for the service's word (``meta_dropped``: the publisher's
note that a producer's meta went)."""


def own_keys_renamed(meta: dict[str, Any]) -> dict[str, Any] | None:
    """``meta`` with each key in ``RESERVED_META`` renamed ``meta.<key>`` (``meta.meta.<key>`` if taken);
    None when no key clashes (the caller keeps its dict).

    Why: the service adds ``blank``, ``hot_pixels``, ``n_columns``... only when they apply, so a producer's
    key of that name came out as the service's word (audit h30). Renamed, not refused: the value is kept.
    """
    if RESERVED_META.isdisjoint(meta):
        return None
    out: dict[str, Any] = {}
    for key, value in meta.items():
        name = key
        while name in RESERVED_META or (name != key and name in meta):
            name = f"meta.{name}"
        out[name] = value
    return out


@dataclass
class Frame:
    """A raw frame inside the service. ``data`` may view the received ZeroMQ buffer (read-only).

    ``chunk`` is the detector's own bitshuffle-LZ4 payload when one came with the frame (DECTRIS), so
    the detector's series number where the dialect has one (0 otherwise). ``seq_restart``: the
    sequence accounting found this frame restarting its acquisition's numbering without a
    ``series_start`` (a sender that came back), so the recorder starts a new part instead of storing
    every ``seq`` twice in one file.
    """

    header: FrameHeader
    data: np.ndarray
    t_recv: float = field(default_factory=time.perf_counter)
    chunk: bytes | None = None
    series: int = 0
    seq_restart: bool = False


FrameHandler = Callable[[Frame], None]
SeriesHandler = Callable[[SeriesMessage], None]


class FrameQueue:
    """Bounded hand-off between threads, by frame count and bytes, that never blocks the producer.

    ``put`` returns False when the item did not fit (the caller decides how to count that loss).
    With ``drop_oldest`` a full queue evicts its oldest item instead, which is how the 'latest'
    policy keeps the denoiser on the newest frames; ``on_evict`` counts those. ``on_change`` is told
    the new length after every put and get, so a depth gauge is never stale.

    ``put(..., force=True)`` is for control messages (``series_start`` / ``series_end``): they are
    taken whatever the bounds and are never evicted either, because a lost ``series_end`` leaves a
    recording open and a lost ``series_start`` mixes two acquisitions.
    """

    def __init__(
        self,
        maxlen: int,
        max_bytes: int | None = None,
        drop_oldest: bool = False,
        on_evict: Callable[[object], None] | None = None,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.maxlen, self.max_bytes, self.drop_oldest = maxlen, max_bytes, drop_oldest
        self.on_evict, self.on_change = on_evict, on_change
        self._items: collections.deque[tuple[object, int, bool]] = collections.deque()  # item, bytes, pinned
        self._bytes = 0
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._items))

    def _full(self, nbytes: int) -> bool:
        if len(self._items) >= self.maxlen:
            return True
        return self.max_bytes is not None and bool(self._items) and self._bytes + nbytes > self.max_bytes

    def put(self, item: object, nbytes: int = 0, force: bool = False) -> bool:
        """Enqueue without blocking; ``force`` ignores the bounds (control messages must not be lost)."""
        with self._cond:
            if self.closed:
                return False
            while not force and self._full(nbytes):
                if not self.drop_oldest:
                    return False
                old = self._evict_oldest()
                if old is None:  # only pinned control messages left: they are never dropped
                    break
                if self.on_evict is not None:
                    self.on_evict(old)
            self._items.append((item, nbytes, force))
            self._bytes += nbytes
            self._cond.notify()
            self._changed()
            return True

    def _evict_oldest(self) -> object | None:
        for i, (it, nb, pinned) in enumerate(self._items):
            if not pinned:
                del self._items[i]
                self._bytes -= nb
                return it
        return None

    def _pop(self) -> object:
        item, nb, _pinned = self._items.popleft()
        self._bytes -= nb
        self._changed()
        return item

    def get(self, timeout: float | None = None) -> object | None:
        """Oldest item, or None on timeout / when closed and empty."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            return self._pop()

    def wait_not_full(self, timeout: float) -> None:
        """For sources that may block (file replay): sleep until there is room or timeout."""
        end = time.monotonic() + timeout
        while len(self._items) >= self.maxlen and not self.closed and time.monotonic() < end:
            time.sleep(0.0005)

    def get_nowait(self) -> object | None:
        with self._cond:
            if not self._items:
                return None
            return self._pop()

    def take_matching(self, pred: Callable[[object], bool], limit: int) -> list[object]:
        """Remove and return, oldest first, up to ``limit`` queued items ``pred`` accepts; the others keep
        their order. Why: the recorder writes an acquisition's queued frames together, while its part is
        open, instead of closing and reopening parts between interleaved acquisitions."""
        if limit <= 0:
            return []
        with self._cond:
            taken: list[object] = []
            kept: collections.deque[tuple[object, int, bool]] = collections.deque()
            entries = iter(self._items)
            for entry in entries:
                if not pred(entry[0]):
                    kept.append(entry)
                    continue
                taken.append(entry[0])
                self._bytes -= entry[1]
                if len(taken) >= limit:
                    break  # the rest as it is, unasked (the producer waits on this lock meanwhile)
            if taken:
                kept.extend(entries)
                self._items = kept
                self._changed()
            return taken

    def drain_newest(self, keep: int) -> tuple[list[object], list[object]]:
        """Take everything: (up to ``keep`` newest items, the older ones that were skipped)."""
        with self._cond:
            items = [it for it, _, _ in self._items]
            self._items.clear()
            self._bytes = 0
            self._changed()
        return items[-keep:] if keep else [], items[:-keep] if keep else items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
