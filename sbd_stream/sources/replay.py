"""Replay: an HDF5 recording as a frame source for the same pipeline as the live service.

Unlike the live ingest, a file can wait: in ``lossless`` mode replay pauses while the denoise queue is
full, so nothing is lost and the run goes as fast as the engine allows. ``realtime`` reproduces the
recorded frame timing instead (from the ``ts`` dataset), which is how a past experiment is re-watched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sbd_stream.formats.recording import iter_recorded
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.protocol import (
    DTYPES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    SeriesHeader,
    SeriesMessage,
)
from sbd_stream.worker import BackgroundWorker


class ReplaySource(BackgroundWorker):
    """Feeds recorded raw frames to ``on_frame`` from a thread; series messages around them."""

    thread_name = "sbd-replay"
    stage = "replay"
    restartable = False  # running it again would send the recording's frames twice

    def __init__(
        self,
        path: Path,
        on_frame: Callable[[Frame], None],
        on_series: Callable[[SeriesMessage], None],
        queue: FrameQueue | None = None,
        realtime: bool = False,
        limit: int | None = None,
    ) -> None:
        self.path, self.on_frame, self.on_series = Path(path), on_frame, on_series
        self.queue, self.realtime, self.limit = queue, realtime, limit
        self.n_sent = 0
        self.done = threading.Event()
        self._init_worker()

    def _run(self) -> None:
        self.run()

    def run(self) -> None:
        acq_cur: str | None = None
        t0_rec = t0_wall = 0.0
        try:
            for acq, seq, ts, data in iter_recorded(self.path):
                if self._stop.is_set() or (self.limit is not None and self.n_sent >= self.limit):
                    break
                if acq != acq_cur:
                    if acq_cur is not None:
                        self.on_series(SeriesMessage(TOPIC_SERIES_END, SeriesHeader(acq_cur, time.time())))
                    acq_cur = acq
                    meta = {"replay_of": str(self.path)}
                    self.on_series(SeriesMessage(TOPIC_SERIES_START, SeriesHeader(acq, time.time(), meta)))
                    t0_rec, t0_wall = ts, time.perf_counter()
                if self.realtime:
                    delay = (ts - t0_rec) - (time.perf_counter() - t0_wall)
                    if delay > 0:
                        time.sleep(delay)
                elif self.queue is not None:
                    while len(self.queue) >= self.queue.maxlen and not self._stop.is_set():
                        self.queue.wait_not_full(0.05)
                name = next(k for k, v in DTYPES.items() if v == data.dtype.newbyteorder("<"))
                header = FrameHeader(acq, seq, ts, (data.shape[0], data.shape[1]), name)
                self.on_frame(Frame(header, data))
                self.n_sent += 1
            if acq_cur is not None:
                self.on_series(SeriesMessage(TOPIC_SERIES_END, SeriesHeader(acq_cur, time.time())))
        finally:
            self.done.set()
