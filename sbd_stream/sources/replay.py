"""Replay: an HDF5 recording as a frame source for the same pipeline as the live service.

Unlike the live ingest, a file can wait: in ``lossless`` mode replay pauses while the denoise queue is
full, so nothing is lost and the run goes as fast as the engine allows. ``realtime`` reproduces the
recorded frame timing instead (from the ``ts`` dataset), which is how a past experiment is re-watched.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.protocol import (
    DTYPES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    SeriesHeader,
    SeriesMessage,
)
from sbd_stream.sinks.recorder import open_recording
from sbd_stream.sources.stacks import SAMPLING_ATTRS
from sbd_stream.worker import BackgroundWorker


def recording_parts(path: Path) -> list[Path]:
    """The file and its rolled continuations (``name_0001.h5`` ...), in order."""
    path = Path(path)
    parts = [path]
    stem = re.sub(r"_\d{4}$", "", path.stem)
    i = 1
    while (nxt := path.with_name(f"{stem}_{i:04d}.h5")).exists():
        if nxt != path:
            parts.append(nxt)
        i += 1
    return parts


def recorded_detector(path: Path) -> dict[str, float]:
    """The detector sampling a recording (or any HDF5 stack) states in its attributes, if any.

    Recordings written by the service carry ``pixel_size_A`` and the dose both per area and per
    pixel; only one dose form is returned (per area wins), as the settings take one.
    """
    try:
        with open_recording(Path(path)) as f:
            attrs = {k: float(f.attrs[k]) for k in SAMPLING_ATTRS if k in f.attrs}
    except (OSError, ValueError, TypeError):
        return {}
    if "dose_e_per_A2" in attrs:
        attrs.pop("counts_per_px", None)
    return attrs


def iter_recorded(path: Path, kind: str = "raw") -> Iterator[tuple[str, int, float, np.ndarray]]:
    """(acq, seq, ts, frame) for every complete frame of ``kind`` across the rolled files."""
    for part in recording_parts(path):
        with open_recording(part) as f:
            if kind not in f:
                continue
            acq = str(f.attrs.get("acq", part.stem))
            g = f[kind]
            n = len(g["complete"])
            seqs, tss = g["seq"][:n], g["ts"][:n]
            for i in range(n):
                yield acq, int(seqs[i]), float(tss[i]), g["frames"][i]


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
