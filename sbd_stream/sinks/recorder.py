"""HDF5 recorder: one SWMR file per acquisition, rolled at a size limit, every frame flushed.

Layout (format ``sbd-recording/1``, NeXus): docs/service.md, ``formats/recording.py`` (the file) and
``formats/nexus.py``. ``complete`` is resized and set last, after the frame is written, so a live
reader or a reader of a crashed file trusts the frames up to the last ``complete == 1``. This thread decides:

* a raw frame of another shape or dtype than its acquisition's open file goes to a new part (writing
  it there would cast it: 70000.5 stored as 65535). Each output goes to the part of its raw frame,
  found by its receive number (``PartIndex``; shape, seq and (seq, ts) repeat or were forgotten),
  reopened if closed; such a part takes no new raw frames, and a late ``series_end`` never closes a
  newer series' part (``RecordItem.series``);
* files are bounded (``idle_close_s``, ``max_open_files``, least recently used first; counted in
  ``sbd_record_files_closed_total``): a detector that never sends ``series_end`` held hundreds open;
* a raw frame restarting its acquisition's numbering without ``series_start`` (``Frame.seq_restart``)
  goes to a new part (``reason="restart"``): else a file held each ``seq`` twice (no join on ``seq``);
* a part is named after its run's first part, with its ``run_uid`` and ``segment`` (record_runs.py);
  a size roll happens before a RAW frame, never for outputs alone (HyperSpy cannot open empty parts);
* denoised frames are cast to ``record.denoised_dtype``, beyond float16's range clipped and counted;
* ``series_start`` / ``series_end`` are never refused by a full queue (``FrameQueue.put(force=True)``);
  refused frames are counted, the first logged, the rest summed up once a minute (``RateLimitedLog``);
* a disk error is counted and ends recording of that acquisition (its file abandoned, never closed:
  ``AcqFile.abandon``); any other exception while writing an item is counted, the file closed cleanly,
  the next frame opens a new part. The thread never dies of one bad item.
* a stop that runs out of time (``give_up``): what is still queued is counted as NOT recorded (one line
  with the number), the item in hand is finished and every file closed cleanly; an item handed over after
  the close is counted as "closed at stop", not as a full queue.
* ``bitshuffle-lz4``: ``compress_threads`` compress raw frames (the filter's exact chunk) while this
  thread writes earlier ones with ``write_direct_chunk`` in queue order (at most 2 x threads in
  flight); a failed compression or a dataset that cannot take the chunk falls back to the filter.
* behind (items queued), the queued items of the acquisition in hand are taken along (``BATCH``, in
  their order; ``FrameQueue.take_matching``) and written while its part is open: interleaved
  acquisitions past ``max_open_files`` closed and reopened a part per item (audit h30 follow-up).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.formats import column_table
from sbd_stream.formats.dectris_codec import compress_framed
from sbd_stream.formats.recording import FORMAT, KINDS, AcqFile, open_recording
from sbd_stream.formats.series_record import series_attrs
from sbd_stream.frames import FrameQueue
from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.sinks.disk_space import check_space
from sbd_stream.sinks.open_parts import OpenParts
from sbd_stream.sinks.record_item import RAW_ROWS_KEPT, PartIndex, Recent, RecordItem
from sbd_stream.sinks.record_runs import RunBook
from sbd_stream.sinks.stored_dtype import StoredDtype
from sbd_stream.supervisor import Supervisor
from sbd_stream.worker import BackgroundWorker, consume

__all__ = ["FORMAT", "KINDS", "RecordItem", "Recorder", "open_recording"]

log = logging.getLogger(__name__)

CONTROL = ("series_start", "series_end")
BATCH = 64
"""Most items of one acquisition written in a row while others wait (``Recorder._handle``)."""


class Recorder(OpenParts, BackgroundWorker):
    """Consumes RecordItems on its own thread; owns every open file."""

    thread_name = "sbd-recorder"
    stage = "recorder"

    def __init__(
        self,
        settings: RecordSettings,
        metrics: Metrics,
        card: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        queue_frames: int = 512,
        queue_bytes: int = 2 * 1024**3,
        sampling: dict[str, Any] | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._init_parts(settings, metrics)  # files, previous, closed_parts, failed, full, evicted
        self.denoised_dtype = np.dtype(settings.denoised_dtype)
        self.stored = StoredDtype(self.denoised_dtype, metrics)  # float16 without overflowing to inf
        self.card = card or {}
        self.sampling = sampling or {}
        self.run_config = run_config or {}
        depth = metrics.queue_depth.labels(queue="record")
        self.queue = FrameQueue(queue_frames, max_bytes=queue_bytes, on_change=depth.set)
        self.series_meta: Recent = Recent()  # acq -> its series_start's part attributes (series_record.py)
        self.t0: Recent = Recent()  # acq -> its first raw frame's ts: the NeXus time axis' origin
        self.raw_part: Recent = Recent(RAW_ROWS_KEPT)  # (acq, seq, ts) -> part: items without ``rx``
        self.part_index = PartIndex()  # rx ranges -> part: items from the service's intake
        self.series_starts: Recent = Recent()  # acq -> series_start items seen (a late series_end)
        self._next_idle_check = 0.0
        # raw frames being compressed off this thread, in queue order (``_handle``)
        self._pool: ThreadPoolExecutor | None = None
        if settings.compress_threads > 0 and settings.compression == "bitshuffle-lz4":
            self._pool = ThreadPoolExecutor(settings.compress_threads, thread_name_prefix="sbd-compress")
        self._pending: collections.deque[tuple[RecordItem, Future | None]] = collections.deque()
        self._in_flight = 2 * max(1, settings.compress_threads)
        self._giving_up = False  # the stop's time ran out (``give_up``): write nothing more
        self._init_worker(supervisor)
        self.directory = Path(settings.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.runs = RunBook()  # part names, run_uid, segment
        self.loss_log = RateLimitedLog(log)  # a full queue: one line, then a sum a minute (not 40 a second)

    # --- producer side (never blocks) -------------------------------------------------------------
    def record(
        self,
        kind: str,
        header: FrameHeader,
        data: np.ndarray | None = None,
        chunk: bytes | None = None,
        restart: bool = False,
        evidence_frames: int = -1,
        columns: np.ndarray | None = None,
        vacuum_counts: float | None = None,
    ) -> bool:
        """Queue one frame of ``kind`` (raw | denoised | llr) named by its header; ``restart`` and
        ``evidence_frames`` (llr): see ``RecordItem``. A raw frame's header ``meta`` and ``exposure_s`` are
        recorded with its row (formats/frame_meta.py). ``columns`` (llr): the frame's whole (K, 4) column
        table and ``vacuum_counts`` its level, as the ``llr`` header states them (``llr_table``); the
        header's ``meta.blank`` / ``meta.vacuum_not_flat`` are recorded with denoised and llr rows."""
        h = header
        item = RecordItem(kind, h.acq, h.seq, h.ts, data, chunk=chunk, restart=restart, rx=h.rx)
        item.evidence_frames = evidence_frames
        if kind == "raw":  # the producer's meta and exposure, as received (formats/frame_meta.py)
            item.meta, item.exposure_s = h.meta, float(h.exposure_s)
        else:
            item.meta = column_table.row_meta(kind, h.meta, columns, vacuum_counts)  # formats/column_table.py
        return self.submit(item)

    def submit(self, item: RecordItem) -> bool:
        """Queue without blocking; a full queue refuses frames (counted) but never series boundaries."""
        nbytes = (0 if item.data is None else int(item.data.nbytes)) + len(item.chunk or b"")
        ok = self.queue.put(item, nbytes, force=item.kind in CONTROL)
        if not ok:
            where = "sbd_record_dropped_total"
            if self.queue.closed:  # closed at stop: an output that came later (a worker out of its time)
                if item.kind in CONTROL:  # nothing to record: the close closed its files
                    return ok
                self.metrics.record_dropped.inc()
                what = "items NOT recorded (recorder closed at stop)"
                msg = "recorder closed at stop: %s frame %s of %s NOT recorded (counted in %s; more: summed)"
                self.loss_log.log("closed", logging.ERROR, what, msg, item.kind, item.seq, item.acq, where)
                return ok
            self.metrics.record_dropped.inc()
            what = "items NOT recorded (recorder queue full)"
            q = self.queue
            full = (
                f"ingest.record_queue_frames = {q.maxlen}" if len(q) >= q.maxlen else f"{q.max_bytes} bytes"
            )
            msg = (
                "recorder queue full (%s): %s frame %s of %s NOT recorded (counted in %s; more: once a "
                "minute). The writer is behind: a burst of new acquisitions (each new part costs ~15 ms "
                "of HDF5 layout) or a slow disk; raise ingest.record_queue_frames for bursts "
                "(docs/service.md)"
            )
            self.loss_log.log(
                "queue-full", logging.ERROR, what, msg, full, item.kind, item.seq, item.acq, where
            )
        return ok

    # --- consumer side ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish what is queued, then close every file."""
        self.queue.close()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        self.loss_log.tick(force=True)  # what came after the close: its sum, now

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def give_up(self, why: str) -> int:
        """Out of time at stop: what is still queued (or waiting for the compressors) is NOT recorded,
        counted in ``sbd_record_dropped_total`` and said in one line with its number; the thread finishes
        the item in hand and closes every file cleanly (no ``h5clear`` needed). Returns the queued ones."""
        self._giving_up = True
        self.queue.close()
        _, left = self.queue.drain_newest(0)
        n = sum(1 for it in left if isinstance(it, RecordItem) and it.data is not None)
        self.metrics.record_dropped.inc(n)
        log.error(
            "recorder: %s: %d queued frames NOT recorded (counted in sbd_record_dropped_total); closing "
            "the files",
            why,
            n,
        )
        return n

    def open_paths(self) -> list[str]:
        """The parts open for write now (named when the thread does not end: they then need h5clear)."""
        try:
            return sorted({str(af.path) for af in [*self.files.values(), *self.previous.values()]})
        except RuntimeError:  # changed size while the thread writes: say nothing rather than half
            return []

    def _run(self) -> None:
        consume(self.queue, self._handle, self.stage, self.supervisor, self._quarantine, self._tick)

    def _finalize(self) -> None:
        self.loss_log.tick(force=True)
        self.files_log.tick(force=True)
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.close_all()

    def _handle(self, item: RecordItem) -> None:
        """The thread's body: compress raw frames on the pool, write everything in queue order.

        Behind (items queued), the queued items of ``item``'s acquisition are taken along, in their order
        (at most ``BATCH``): written while its part is open. With more acquisitions interleaved than
        ``record.max_open_files`` each item otherwise closed one part and reopened its own (~10x the
        cost of an append, benchmarks/bench_recorder.py ``round_robin``). The order within an acquisition
        (frames, outputs, series_start / series_end) is kept; across acquisitions it never mattered.
        """
        self._take(item)
        if not len(self.queue):
            return
        for more in self.queue.take_matching(lambda it: getattr(it, "acq", None) == item.acq, BATCH - 1):
            assert isinstance(more, RecordItem)
            if self._giving_up:  # the stop's time ran out: as if still queued (``give_up``)
                self.metrics.record_dropped.inc(more.data is not None)
                continue
            self.supervisor.call(self.stage, self._take, more, on_error=self._quarantine)

    def _take(self, item: RecordItem) -> None:
        """One item: control messages and (without a pool) frames written now, raw frames compressed."""
        item = self._as_stored(item)
        if item.kind in CONTROL or self._pool is None:
            self._drain()
            self.write(item)
            return
        fut = None
        if (
            item.kind in KINDS  # raw, denoised (float16 by default) and llr frames: compressing holds a core
            and item.chunk is None
            and item.data is not None
            and item.data.dtype.kind in "uif"
        ):
            fut = self._pool.submit(compress_framed, item.data, "bslz4")
        self._pending.append((item, fut))
        # keep the pool busy while frames keep coming; once the queue is empty, write all now
        self._drain(self._in_flight if len(self.queue) else 0)

    def _as_stored(self, item: RecordItem) -> RecordItem:
        """A denoised frame as the file stores it (``record.denoised_dtype``, clipped to its range)."""
        if item.kind != "denoised" or item.data is None or item.data.dtype == self.denoised_dtype:
            return item
        return replace(item, data=self.stored(item.data, item.acq, item.seq))

    def _drain(self, keep: int = 0) -> None:
        """Write pending frames, oldest first, until at most ``keep`` remain (waits on the pool); after
        ``give_up``, count them as NOT recorded instead."""
        while len(self._pending) > keep:
            item, fut = self._pending.popleft()
            if self._giving_up:
                if fut is not None:
                    fut.cancel()
                self.metrics.record_dropped.inc(item.data is not None)
                continue
            chunk = None
            if fut is not None:
                try:
                    chunk = fut.result()
                except Exception:  # the HDF5 filter compresses it on this thread instead
                    msg = "compressing %s frame %s failed; the filter compresses it"
                    log.warning(msg, item.acq, item.seq, exc_info=True)
            self.supervisor.call(self.stage, self.write, item, chunk, on_error=self._quarantine)

    def _quarantine(self, item: RecordItem, exc: Exception) -> None:
        """After an unexpected error on ``item``: close its acquisition's files cleanly, count the loss."""
        if item.data is not None:
            self.metrics.record_dropped.inc()
        if self._drop(item.acq, "error"):
            log.error("closed %s after that error; its next frame opens a new part", item.acq)

    def _tick(self) -> None:
        self.loss_log.tick()
        self.files_log.tick()
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].done()):
            self._drain(len(self._pending) - 1)
        if not len(self.queue):
            self._drain()
        now = time.monotonic()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + min(1.0, self.s.idle_close_s / 4)
        for acq, af in [*self.files.items(), *self.previous.items()]:
            if now - af.last_used >= self.s.idle_close_s:
                log.info("closing %s: nothing written for %.0f s", af.path, now - af.last_used)
                self._close_file(acq, af, "idle")

    def write(self, item: RecordItem, compressed: bytes | None = None) -> None:
        """Write one item synchronously (also usable without a thread).

        ``compressed``: the pool's bitshuffle-LZ4 chunk of ``item.data``, stored as is when the raw
        dataset takes it (a detector's own ``item.chunk`` comes first).
        """
        if item.kind == "series_start":
            if item.acq in self.files or item.acq in self.previous:  # its next frames open a new part
                self.metrics.record_rolls.labels(reason="series_start").inc()
            self.close(item.acq)
            self.runs.boundary(item.acq)
            self.series_starts[item.acq] = self.series_starts.get(item.acq, 0) + 1
            self.failed.pop(item.acq, None)
            self.series_meta[item.acq] = series_attrs(item.meta, item.start)  # announcements kept apart
            self.t0.pop(item.acq, None)
            return
        if item.kind == "series_end":
            if item.series is not None and item.series < self.series_starts.get(item.acq, 0):
                if (late := self.previous.pop(item.acq, None)) is not None:  # its own part, reopened
                    self._shut(late)
                return  # the newer series' part and time origin stay
            self.close(item.acq)
            self.t0.pop(item.acq, None)
            return
        item = self._as_stored(item)  # a no-op after ``_handle``; for direct callers
        if (data := item.data) is None or item.kind not in KINDS:
            return
        if item.acq in self.failed:
            self.metrics.record_dropped.inc()
            return
        t0 = time.perf_counter()
        try:
            check_space(self.directory, self.s.min_free_bytes, data.nbytes)  # sinks/disk_space.py
            if item.restart and item.kind == "raw":
                self._restart(item)
            af = self._file_for(item)
            if af is None:  # an output whose raw frame was never recorded (queue full, or forgotten)
                self.metrics.record_dropped.inc()
                log.warning("%s %s of %s: no recording part to add it to", item.kind, item.seq, item.acq)
                return
            if item.kind not in af.kinds:  # record_denoised / record_llr off
                return
            chunk = item.chunk if item.chunk is not None else compressed
            table, own = column_table.row_values(item.kind, item.meta, item.evidence_frames)
            meta, own = (item.meta, {"exposure_s": item.exposure_s}) if item.kind == "raw" else (None, own)
            as_is = af.append(item.kind, item.seq, item.ts, data, chunk, table, meta, **own)
            if as_is and item.chunk is not None:
                self.metrics.record_direct_chunks.inc()
            if item.kind == "raw" and item.rx >= 0:
                self.part_index.add(item.acq, item.rx, af.path)
            elif item.kind == "raw":
                self.raw_part[(item.acq, item.seq, item.ts)] = af.path
            if af.since_flush >= self.s.flush_every:
                af.flush()
                if os.path.getsize(af.path) >= self.s.max_file_bytes and self.files.get(item.acq) is af:
                    self.full.add(item.acq)  # the next RAW frame rolls (``_file_for``): outputs never do
        except (OSError, RuntimeError, ValueError) as exc:  # h5py reports write failures as all three
            self._fail(item.acq, exc)
            return
        self.metrics.frames_recorded.labels(kind=item.kind).inc()
        self.metrics.stage_latency.labels(stage="record").observe(time.perf_counter() - t0)

    def _file_for(self, item: RecordItem) -> AcqFile | None:
        """The part this item belongs in: opened, or rolled on a new shape / dtype, for raw frames."""
        assert item.data is not None
        af = self.files.get(item.acq)
        shape, dtype = tuple(item.data.shape), item.data.dtype
        if item.kind == "raw":
            if af is not None and (af.shape != shape or af.raw_dtype != dtype or item.acq in self.full):
                reason = "shape" if af.shape != shape else "dtype" if af.raw_dtype != dtype else "size"
                return self._roll(item.acq, reason, shape, dtype)
            if af is None:
                if (back := self.evicted.take(item.acq, shape, dtype, self.s.idle_close_s)) is not None:
                    return self._continue(item.acq, *back)
                if item.acq not in self.t0:
                    self.t0[item.acq] = item.ts
                return self._open(item.acq, shape, dtype)
            return af
        # outputs: the part holding their raw frame (by rx; without one, by shape if that frame is forgotten)
        if item.rx >= 0 and (path := self.part_index.find(item.acq, item.rx)) is None:
            return None
        if item.rx < 0:
            path = self.raw_part.get((item.acq, item.seq, item.ts))
        for cand in (af, self.previous.get(item.acq)):
            if cand is not None and (cand.path == path if path is not None else cand.shape == shape):
                return cand
        return self._reopen_for(item.acq, shape, path)

    def _open(self, acq: str, shape: tuple[int, int], dtype: np.dtype) -> AcqFile:
        self._make_room()
        path, run = self.runs.next_part(acq, self.directory, self.s.suffix)  # + run_uid, segment
        attrs = {
            "format": FORMAT,
            "acq": acq,
            **run,
            "created": time.time(),
            "t0": float(self.t0.get(acq, time.time())),
            "engine_card": json.dumps(self.card, default=str),
            "run_config": json.dumps(self.run_config, default=str),
            **self.series_meta.get(acq, {"series_meta": "{}"}),  # + series_start, when one was recorded
            **self.sampling,  # pixel_size_A, dose_e_per_A2, counts_per_px, bin, working_pixel_A
        }
        try:
            af = AcqFile(path, shape, dtype, self.s, attrs)
        except BaseException:
            self.runs.undo(acq)
            raise
        self.files[acq] = af
        self.full.discard(acq)
        self._gauge()
        log.info("recording %s to %s", acq, path)
        return af

    def _roll(self, acq: str, reason: str, shape: tuple[int, int], dtype: np.dtype) -> AcqFile:
        """Continue ``acq`` in a new part; the old part stays open for the outputs still on their way."""
        self.metrics.record_rolls.labels(reason=reason).inc()
        old = self.files.pop(acq)
        if reason in ("shape", "dtype"):
            msg = "%s: frame %s changed from %s %s to %s %s; continuing in a new file"
            log.warning(msg, acq, reason, old.shape, old.raw_dtype, shape, np.dtype(dtype))
        before = self.previous.pop(acq, None)
        if before is not None:
            self._shut(before)
        old.flush()
        self.previous[acq] = old
        return self._open(acq, shape, dtype)

    def _restart(self, item: RecordItem) -> None:
        """A producer restarted ``item.acq``'s numbering without series_start: continue in a new part.

        As for a series_start, the time axis starts again; the old part stays open for its outputs
        still on their way (they find it by (acq, seq) until the new run's frames reuse those numbers).
        """
        assert item.data is not None
        self.t0[item.acq] = item.ts
        self.runs.boundary(item.acq)  # the new run's numbering: a new segment for readers
        self.evicted.forget(item.acq)
        if item.acq not in self.files:  # a new acquisition, or its part was closed: one opens anyway
            return
        msg = "%s: sequence restarted at seq %s without series_start; continuing in a new part"
        log.warning(msg, item.acq, item.seq)  # so that no part holds a seq twice
        self._roll(item.acq, "restart", tuple(item.data.shape), item.data.dtype)
