"""Replay: an HDF5 recording as a frame source for the same pipeline as the live service.

Unlike the live ingest, a file can wait: in ``lossless`` mode replay pauses while the denoise queue is
full, so nothing is lost and the run goes as fast as the engine allows. ``realtime`` reproduces the
recorded frame timing instead (from the ``ts`` dataset), which is how a past experiment is re-watched.

Series: each (acquisition, ``segment``) of the recording is sent as its own series, a series_start
shaped as the live one (formats/series_record.py ``read_series``): the recorded announcements
(``exposure_s``, ``n_frames``, ``shape``, ``dtype``) at its top level, the producer's ``meta`` as its
``meta`` with ``replay_of`` added, and the recorded series_start ``ts`` (older parts, which lack it: the
part's ``t0``, the segment's first frame's ``ts``). It sent the replay's wall clock, the announcements
inside ``meta`` and no top-level ``n_frames`` (audit h28, item 2). Frames carry their own recorded
``exposure_s`` and ``meta`` (formats/frame_meta.py); a part written before those: the series' exposure
(the announced ``exposure_s``, else the part's NeXus ``count_time``; 0.0, the wire default, if neither)
and an empty ``meta``. A recording holding two series or a
producer restart of one acquisition (segments 0 and 1, both counting ``seq`` from 0) was sent as one
series, so ``replay --record-dir`` wrote each ``seq`` twice into one part; a series_start between them
makes the recorder open a new part, as it did when the frames were first recorded.

Gaps: the frames missing between the first and the last frame replayed of each series (a recorded gap:
they never arrived live) are counted at the series' end in ``sbd_frames_missing_total`` (so the
summary's ``frames_missing``), each forward jump in ``sbd_sequence_gaps_total``, a recorded late frame in
``sbd_frames_out_of_order_total``; one line per series names them. Replay counted none.

What a part declares is checked before it is read (``formats/limits.py``): its frame shape against
wire format v1 and ``ingest.max_payload_bytes`` (the live service would refuse such a frame too),
its rows against what was written. A crafted part declaring 10^12 rows or 100000 x 100000 frames
made replay allocate terabytes; it is now a one-line ``RecordingError``.

Each row's ``ts`` is checked as live input's is (``protocol.ts_ok``): a row whose ``ts`` names no date
(NaN, 1e300: a crafted or damaged file) is skipped, counted (``sbd_frames_malformed_total{reason=
"bad_ts"}``) and logged once. Fed as it was, a NaN first ``ts`` made the recorder refuse the whole
replayed acquisition (exit 0, nothing written) and the publisher raise on that frame.

``realtime`` paces each frame relative to the one before it, by the difference of their ``ts``: a step
back in ``ts`` sends the frame at once and pacing goes on from there (paced from the segment's first
``ts``, a late first frame unpaced all the rest); a gap longer than ``MAX_REALTIME_GAP_S`` is shortened
to it, with one log line (a ``ts`` jump of hours waited silently for hours, and one past ~9.2e9 s
overflowed the wait: a traceback, frames lost).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats import frame_meta
from sbd_stream.formats.limits import BLOCK_ROWS, RecordingError, frame_problem, trusted_rows
from sbd_stream.formats.recording import open_recording, recording_parts
from sbd_stream.formats.safe_chunks import UnsafeChunks, safe_dataset
from sbd_stream.formats.series_record import RecordedSeries, read_series
from sbd_stream.frames import Frame, FrameQueue, own_keys_renamed
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    DEFAULT_MAX_PAYLOAD,
    DTYPES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    SeriesHeader,
    SeriesMessage,
    finite_json,
    ts_ok,
)
from sbd_stream.worker import BackgroundWorker

log = logging.getLogger(__name__)

MAX_REALTIME_GAP_S = 10.0
"""``--realtime``: the longest wait between two frames; a longer recorded gap is shortened to this."""

Series = tuple[str, int, RecordedSeries, float]  # (acq, segment, its series_start, the frames' exposure_s)


def raw_rows(f: Any, part: Path, max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """The complete raw rows of an open part, once its frames are known to fit the wire format and
    ``max_payload`` (``RecordingError`` otherwise; nothing of the frames is read)."""
    g = f["raw"]
    if "frames" not in g or "seq" not in g or "ts" not in g:
        raise RecordingError(f"{part}: raw frames without their seq / ts columns (not a `serve` recording?)")
    fr = g["frames"]
    limit = "ingest.max_payload_bytes"
    if (problem := frame_problem(tuple(fr.shape[1:]), fr.dtype.itemsize, max_payload, limit)) is not None:
        raise RecordingError(f"{part}: raw {problem}")
    name = fr.dtype.newbyteorder("<")
    if not any(v == name for v in DTYPES.values()):
        raise RecordingError(f"{part}: raw frames of dtype {fr.dtype}, which wire format v1 cannot carry")
    return trusted_rows(g, f"{part}: raw")


def check_recording(path: Path, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
    """Every part's raw frames and rows, checked before a pipeline starts (``RecordingError``); a
    recording without one complete raw row is refused as ``replay --offline`` and ``export`` refuse it.
    Why: such a replay loaded the engine, sent nothing (no series_start, no series_end for a waiting
    subscriber), recorded nothing and exited 0 without a word (audit h29)."""
    rows = 0
    for part in recording_parts(Path(path)):
        with open_recording(part) as f:
            if "raw" in f:
                rows += raw_rows(f, part, max_payload)
    if rows == 0:
        raise RecordingError(f"{path}: the recording holds no complete raw frame; nothing to replay")


def recorded_series(
    path: Path, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Iterator[tuple[Series, int, float, np.ndarray]]:
    """(series, seq, ts, frame) for every complete raw frame across the recording's parts, in order."""
    for series, seq, ts, frame, _ in recorded_frames(path, max_payload):
        yield series, seq, ts, frame


def recorded_frames(
    path: Path, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Iterator[tuple[Series, int, float, np.ndarray, tuple[float, dict[str, Any]]]]:
    """``recorded_series`` and each frame's (exposure_s, meta) as recorded (formats/frame_meta.py); a
    part written before them: the series' exposure and an empty meta. Per-row columns read a block at a
    time."""
    for part in recording_parts(Path(path)):
        with open_recording(part) as f:
            if "raw" not in f:
                continue
            series = (str(f.attrs.get("acq", part.stem)), int(f.attrs.get("segment", 0)), *_recorded_start(f))
            g = f["raw"]
            n = raw_rows(f, part, max_payload)
            rows = frame_meta.rows(g, n, f"{part}: raw")
            frames = _safe_frames(g["frames"], f"{part}:raw/frames")
            for a in range(0, n, BLOCK_ROWS):
                seqs, tss = g["seq"][a : min(n, a + BLOCK_ROWS)], g["ts"][a : min(n, a + BLOCK_ROWS)]
                for i in range(len(seqs)):
                    exposure, meta = next(rows)
                    said = (series[3] if exposure is None or exposure < 0 else exposure, _sendable(meta))
                    yield series, int(seqs[i]), float(tss[i]), frames[a + i], said


def _safe_frames(ds: Any, where: str) -> Any:
    """The raw frames read through ``formats/safe_chunks.py``: a crafted bitshuffle-LZ4 chunk went to the
    hdf5plugin filter, whose unchecked LZ4 decoder let it kill live ``replay`` (SIGSEGV); now a refused
    filter is a ``RecordingError`` here and a damaged chunk one when its frame is read."""
    try:
        return _Checked(safe_dataset(ds), where)
    except UnsafeChunks as e:
        raise RecordingError(f"{where}: {e}") from None


class _Checked:
    """``frames[i]`` whose ``UnsafeChunks`` names the part and dataset, as a ``RecordingError``."""

    def __init__(self, ds: Any, where: str) -> None:
        self.ds, self.where = ds, where

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            return self.ds[i]
        except UnsafeChunks as e:
            raise RecordingError(f"{self.where}: {e}; damaged?") from None


def _sendable(meta: dict[str, Any] | None) -> dict[str, Any]:
    """A recorded meta as the live input would pass it on: none (an older part) empty, a crafted key the
    service sets itself renamed ``meta.<key>`` (``frames.own_keys_renamed``); one the wire could not
    carry (not finite) left out whole, with a note (``meta_dropped``)."""
    if not meta:
        return {}
    if not finite_json(meta):
        return {"meta_dropped": "not finite in the recording"}
    return own_keys_renamed(meta) or meta


def _recorded_start(f: Any) -> tuple[RecordedSeries, float]:
    """A part's series_start to send (its ``ts``: recorded, else ``t0``; None: the first frame's ``ts``)
    and its frames' exposure_s: the announced one, else the NeXus ``count_time``, else 0.0."""
    rec = read_series(f.attrs)
    if rec.ts is None and ts_ok(t0 := _number(f.attrs.get("t0"))):
        rec = replace(rec, ts=t0)
    exposure = rec.announced.get("exposure_s")
    if exposure is None:
        count_time = f.get("entry/instrument/detector/count_time")
        exposure = _number(count_time[()] if count_time is not None and count_time.shape == () else None)
    if isinstance(exposure, int | float) and math.isfinite(exposure) and exposure >= 0:  # a crafted file
        return rec, float(exposure)
    return rec, 0.0


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (an HDF5 scalar included), else None."""
    if isinstance(value, np.generic):
        value = value.item()
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class SeriesGaps:
    """The frames missing from one replayed series: between its first and last replayed ``seq``, those
    the recording lacks (a part holds each ``seq`` once; a late frame fills its place)."""

    def __init__(self) -> None:
        self.first = self.last = -1
        self.n = self.jumps = self.late = 0

    def add(self, seq: int) -> None:
        if self.n and seq > self.last + 1:
            self.jumps += 1
        elif self.n and seq <= self.last:
            self.late += 1
        self.first = seq if not self.n else min(self.first, seq)
        self.last, self.n = max(self.last, seq), self.n + 1

    @property
    def missing(self) -> int:
        return max(0, self.last - self.first + 1 - self.n) if self.n else 0


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
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
        max_gap_s: float = MAX_REALTIME_GAP_S,
    ) -> None:
        """``max_payload``: the largest frame the pipeline takes (``ingest.max_payload_bytes``); ``stop``:
        an event that ends the feed early (the CLI's signal handlers set it), the series closed;
        ``metrics``: where rows with a bad ``ts`` are counted (``n_bad_ts`` counts them in any case);
        ``max_gap_s``: ``realtime``'s longest wait between two frames."""
        self.path, self.on_frame, self.on_series = Path(path), on_frame, on_series
        self.queue, self.realtime, self.limit = queue, realtime, limit
        self.max_payload, self.metrics, self.max_gap_s = max_payload, metrics, max_gap_s
        self.n_sent = self.n_bad_ts = self.n_gaps_shortened = self.n_missing = 0
        self.done = threading.Event()
        self._init_worker()
        if stop is not None:
            self._stop = stop

    def _run(self) -> None:
        self.run()

    def run(self) -> None:
        acq_cur: str | None = None
        key: tuple[str, int] | None = None
        prev_ts = prev_wall = 0.0
        gaps = SeriesGaps()
        try:
            for (acq, segment, rec, _), seq, ts, data, (exposure, meta) in recorded_frames(
                self.path, self.max_payload
            ):
                if self._stop.is_set() or (self.limit is not None and self.n_sent >= self.limit):
                    break
                if not ts_ok(ts):
                    self._bad_ts(acq, seq, ts)
                    continue
                if (acq, segment) != key:  # a new acquisition, or a new series / restart of this one
                    if acq_cur is not None:
                        self._series_end(acq_cur, gaps)
                    acq_cur, key, gaps = acq, (acq, segment), SeriesGaps()
                    self.on_series(SeriesMessage(TOPIC_SERIES_START, self._series_start(acq, rec, ts)))
                    prev_ts, prev_wall = ts, time.perf_counter()
                if self.realtime:
                    due = prev_wall + self._step(acq, seq, ts - prev_ts)
                    delay = due - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                    prev_ts, prev_wall = ts, max(due, time.perf_counter())
                elif self.queue is not None:
                    while len(self.queue) >= self.queue.maxlen and not self._stop.is_set():
                        self.queue.wait_not_full(0.05)
                name = next(k for k, v in DTYPES.items() if v == data.dtype.newbyteorder("<"))
                header = FrameHeader(acq, seq, ts, (data.shape[0], data.shape[1]), name, exposure, meta)
                gaps.add(seq)
                self.on_frame(Frame(header, data))
                self.n_sent += 1
            if acq_cur is not None:
                self._series_end(acq_cur, gaps)
        finally:
            self._summary()
            self.done.set()

    def _series_start(self, acq: str, rec: RecordedSeries, first_ts: float) -> SeriesHeader:
        """The series_start as recorded: announcements top-level, the producer's meta + ``replay_of``."""
        a = rec.announced
        shape = (int(a["shape"][0]), int(a["shape"][1])) if "shape" in a else None  # valid: [H, W]
        meta = {**rec.meta, "replay_of": str(self.path)}
        ts = first_ts if rec.ts is None else rec.ts
        return SeriesHeader(acq, ts, meta, a.get("n_frames"), shape, a.get("dtype"), a.get("exposure_s"))

    def _series_end(self, acq: str, gaps: SeriesGaps) -> None:
        """Count the series' recorded gaps (module docstring), then send its series_end."""
        if gaps.missing and self.metrics is not None:
            self.metrics.frames_gap.inc(gaps.missing)
            self.metrics.gaps.inc(gaps.jumps)
        if gaps.late and self.metrics is not None:
            self.metrics.frames_out_of_order.inc(gaps.late)
        if gaps.missing:
            self.n_missing += gaps.missing
            log.warning(
                "replay: %s: %d frames of %s between seq %d and %d are not in the recording (%d gaps; "
                "counted in sbd_frames_missing_total)",
                self.path, gaps.missing, acq, gaps.first, gaps.last, gaps.jumps,
            )  # fmt: skip
        self.on_series(SeriesMessage(TOPIC_SERIES_END, SeriesHeader(acq, time.time())))

    def _step(self, acq: str, seq: int, step: float) -> float:
        """The wait before frame ``seq``: its recorded ``ts`` step, none when ``ts`` went back, capped."""
        if step <= self.max_gap_s:
            return max(step, 0.0)
        self.n_gaps_shortened += 1
        log.log(
            logging.WARNING if self.n_gaps_shortened == 1 else logging.DEBUG,
            "replay --realtime: %s frame %d comes %.6g s after the one before it in the recording; the "
            "wait is shortened to %g s (so is every gap over %g s; later ones are logged at DEBUG)",
            acq, seq, step, self.max_gap_s, self.max_gap_s,
        )  # fmt: skip
        return self.max_gap_s

    def _bad_ts(self, acq: str, seq: int, ts: float) -> None:
        """A row whose ``ts`` names no date: skipped, counted, the first one logged (as live input)."""
        self.n_bad_ts += 1
        if self.metrics is not None:
            self.metrics.frames_malformed.labels(reason="bad_ts").inc()
        log.log(
            logging.WARNING if self.n_bad_ts == 1 else logging.DEBUG,
            "replay: %s: frame %d of %s has ts %r, which names no date in years 1-9999: skipped, not "
            "replayed (counted in sbd_frames_malformed_total{reason=\"bad_ts\"}; later ones are logged "
            "at DEBUG and summed up at the end)",
            self.path, seq, acq, ts,
        )  # fmt: skip

    def _summary(self) -> None:
        if self.n_bad_ts > 1:
            log.warning("replay: %s: %d frames skipped in all for a bad ts", self.path, self.n_bad_ts)
        if self.n_gaps_shortened > 1:
            log.info("replay --realtime: %d gaps over %g s shortened", self.n_gaps_shortened, self.max_gap_s)
