"""What the recorder thread is handed, and the bounded per-acquisition memory it keeps.

Kept apart from the recorder thread (sinks/recorder.py) so that the producers (the service's sinks,
replay, tests, benchmarks) and the thread agree on one small item type without the thread's file
logic, and so that the recorder's bookkeeping cannot grow without bound on a stream of new ids.
"""

from __future__ import annotations

import bisect
import collections
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PARTS_KEPT", "RAW_ROWS_KEPT", "REMEMBER_ACQS", "Evicted", "PartIndex", "Recent", "RecordItem"]

REMEMBER_ACQS = 4096  # part numbers and series metadata kept for this many recent acquisitions
PARTS_KEPT = 64  # closed parts per acquisition that late outputs may still be appended to
RAW_ROWS_KEPT = 16384  # (acq, seq) -> part of the latest raw frames: 400 s at 40 Hz of output latency


@dataclass
class RecordItem:
    """One thing to write: a frame of some kind, or a series boundary (``data`` None)."""

    kind: str  # raw | denoised | llr | series_start | series_end
    acq: str
    seq: int = 0
    ts: float = 0.0
    data: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # raw frames from a DECTRIS detector: the bitshuffle-LZ4 chunk as it came, stored without
    # recompressing when the raw dataset's filter and dtype match (``data`` stays authoritative)
    chunk: bytes | None = None
    # a raw frame that restarted its acquisition's numbering without series_start (Frame.seq_restart):
    # it opens a new part, so no part holds one seq twice
    restart: bool = False
    # series_end: how many series_start items of ``acq`` its producer had handed over when the end
    # arrived. An end travels behind its series' outputs, so a next series_start (and frames) of a
    # reused acq name may be written first; a count below the recorder's marks such a late end, which
    # then closes nothing of the newer series (it split the newer series into two parts). None: close.
    series: int | None = None
    rx: int = -1  # the frame's receive number (FrameHeader.rx); -1: not from the service's intake
    # llr rows: how many other frames' counts scored the map (0: the frame's own; -1: not said), stored
    # beside seq and ts, so a reader can tell a 1-frame LLR from an N-frame one (their scales differ ~N-fold)
    evidence_frames: int = -1
    # raw frames: the header's exposure_s (NaN: not given), recorded beside ``meta`` (the producer's, as
    # received: formats/frame_meta.py), so a replay sends each frame as it came
    exposure_s: float = math.nan
    # series_start: the message's own fields beside ``meta`` (``ts`` and the announcements it stated:
    # formats/series_record.py ``series_fields``), recorded apart so neither hides the other; None (an
    # API caller giving ``meta`` alone): ``series_meta`` is ``meta``, as before
    start: dict[str, Any] | None = None


class Recent(collections.OrderedDict):
    """A dict that forgets its least recently set keys beyond ``limit`` (per-acquisition state)."""

    def __init__(self, limit: int = REMEMBER_ACQS) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        """Set ``key`` as the most recent. Each step is one C call that cannot fail: set-then-move_to_end
        raised KeyError when another thread popped the key in between (a lost ``series_end``)."""
        super().pop(key, None)
        super().__setitem__(key, value)  # a new key goes last
        while len(self) > self.limit:
            try:
                self.popitem(last=False)
            except KeyError:  # emptied meanwhile by another thread
                break


class PartIndex:
    """Which part holds the raw frame with receive number ``rx``: per acquisition, the first ``rx`` of
    each part, in order (raw frames of an acquisition reach the recorder in receive order, and only its
    current part takes them, so the parts split its ``rx`` into consecutive ranges).

    Why not remember every raw frame: a complete lane finishing skipped frames long after (a 2 GiB
    backlog holds 65,536 small frames) outlived a 16,384-row memory, and its outputs fell back to the
    newest part of their shape; and (acq, seq, ts) repeats when an acq name is reused with seq and ts
    from 0. One entry per part instead: ``parts_per_acq`` bounds the memory.
    """

    def __init__(self, parts_per_acq: int = 4096) -> None:
        self.parts: Recent = Recent()  # acq -> [(first rx, path)]
        self.per_acq = parts_per_acq

    def add(self, acq: str, rx: int, path: Path) -> None:
        known = self.parts.get(acq)
        if known is None or known[-1][1] != path:
            self.parts[acq] = [*(known or []), (rx, path)][-self.per_acq :]
        else:
            self.parts.move_to_end(acq)

    def find(self, acq: str, rx: int) -> Path | None:
        """The part whose range holds ``rx`` (None: before the first part still remembered)."""
        known = self.parts.get(acq) or []
        i = bisect.bisect_right(known, rx, key=lambda part: part[0]) - 1  # per output: no list built
        return known[i][1] if i >= 0 else None


class Evicted:
    """Current parts closed only to keep ``record.max_open_files``: where their raw frames continue.

    Why: with more acquisitions interleaved than files may be open (24 round-robin against 16), the
    least recently used part is the very one the next frame needs. Each frame then opened a new part
    (the NeXus layout laid out again: 397 files for 600 frames), the writer fell behind at 40 Hz and
    the queue dropped 27 % of the raw frames. Reopening the same part costs an open, not a layout, and
    keeps one part per acquisition.
    """

    def __init__(self, limit: int = REMEMBER_ACQS) -> None:
        self.parts: Recent = Recent(limit)  # acq -> (path, shape, dtype, monotonic time of the close)

    def add(self, acq: str, path: Path, shape: tuple[int, ...], dtype: np.dtype, when: float) -> None:
        self.parts[acq] = (path, tuple(shape), np.dtype(dtype), when)

    def take(
        self, acq: str, shape: tuple[int, ...], dtype: np.dtype, max_age_s: float
    ) -> tuple[Path, float] | None:
        """(path, time of the close) of ``acq``'s evicted part if a raw frame of ``shape`` and ``dtype``
        may continue it, closed less than ``max_age_s`` ago (``idle_close_s``: a part idle that long is
        done); else forgotten, and that frame opens a new part, as after a roll or an idle close."""
        got = self.parts.pop(acq, None)
        if got is None or got[1] != tuple(shape) or got[2] != np.dtype(dtype) or not got[0].exists():
            return None
        return (got[0], got[3]) if time.monotonic() - got[3] < max_age_s else None

    def forget(self, acq: str) -> None:
        """A series boundary, restart or failure: the next raw frame starts a new part."""
        self.parts.pop(acq, None)
