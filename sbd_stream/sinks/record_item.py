"""What the recorder thread is handed, and the bounded per-acquisition memory it keeps.

Kept apart from the recorder thread (sinks/recorder.py) so that the producers (the service's sinks,
replay, tests, benchmarks) and the thread agree on one small item type without the thread's file
logic, and so that the recorder's bookkeeping cannot grow without bound on a stream of new ids.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PARTS_KEPT", "RAW_ROWS_KEPT", "REMEMBER_ACQS", "Recent", "RecordItem"]

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


class Recent(collections.OrderedDict):
    """A dict that forgets its least recently set keys beyond ``limit`` (per-acquisition state)."""

    def __init__(self, limit: int = REMEMBER_ACQS) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
