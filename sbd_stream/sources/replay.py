"""Replay: an HDF5 recording as a frame source for the same pipeline as the live service.

Unlike the live ingest, a file can wait: in ``lossless`` mode replay pauses while the denoise queue is
full, so nothing is lost and the run goes as fast as the engine allows. ``realtime`` reproduces the
recorded frame timing instead (from the ``ts`` dataset), which is how a past experiment is re-watched.

Series: each (acquisition, ``segment``) of the recording is sent as its own series, with the part's
recorded ``series_meta`` and ``replay_of`` beside it. A recording holding two series or a producer
restart of one acquisition (segments 0 and 1, both counting ``seq`` from 0) was sent as one series,
so ``replay --record-dir`` wrote each ``seq`` twice into one part; a series_start between them makes
the recorder open a new part, as it did when the frames were first recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.recording import open_recording, recording_parts
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

Series = tuple[str, int, dict[str, Any]]  # (acq, segment, recorded series_meta)


def recorded_series(path: Path) -> Iterator[tuple[Series, int, float, np.ndarray]]:
    """(series, seq, ts, frame) for every complete raw frame across the recording's parts, in order."""
    for part in recording_parts(Path(path)):
        with open_recording(part) as f:
            if "raw" not in f:
                continue
            try:
                meta = json.loads(f.attrs.get("series_meta", "{}"))
            except (TypeError, ValueError):
                meta = {}
            series = (str(f.attrs.get("acq", part.stem)), int(f.attrs.get("segment", 0)), meta)
            g = f["raw"]
            n = len(g["complete"])
            seqs, tss = g["seq"][:n], g["ts"][:n]
            for i in range(n):
                yield series, int(seqs[i]), float(tss[i]), g["frames"][i]


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
        key: tuple[str, int] | None = None
        t0_rec = t0_wall = 0.0
        try:
            for (acq, segment, recorded), seq, ts, data in recorded_series(self.path):
                if self._stop.is_set() or (self.limit is not None and self.n_sent >= self.limit):
                    break
                if (acq, segment) != key:  # a new acquisition, or a new series / restart of this one
                    if acq_cur is not None:
                        self.on_series(SeriesMessage(TOPIC_SERIES_END, SeriesHeader(acq_cur, time.time())))
                    acq_cur, key = acq, (acq, segment)
                    meta = {**recorded, "replay_of": str(self.path)}
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
