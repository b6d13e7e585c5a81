"""Which recording parts are open: the bound on open files, closes, reopens and failures.

Kept apart from the recorder's thread and writes (sinks/recorder.py): this is the part of the recorder
that decides when a file closes (``max_open_files``, least recently used first; ``idle_close_s`` is the
thread's tick), when a closed part opens again (late outputs: ``_reopen_for``; raw frames of a part
closed only to keep the bound: ``_continue``) and what a failed write does (the part abandoned, never
closed: ``AcqFile.abandon``). Every close is counted in ``sbd_record_files_closed_total``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import AcqFile
from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.disk_space import is_disk_full
from sbd_stream.sinks.record_item import PARTS_KEPT, Evicted, Recent

__all__ = ["OpenParts"]

log = logging.getLogger("sbd_stream.sinks.recorder")  # one logger for the recorder's lines


class OpenParts:
    """The open parts of every acquisition and the rules that close and reopen them (a mixin of
    ``Recorder``; its state is set up by ``_init_parts``)."""

    def _init_parts(self, settings: RecordSettings, metrics: Metrics) -> None:
        self.s, self.metrics = settings, metrics
        self.files: dict[str, AcqFile] = {}  # the current part of each open acquisition
        self.previous: dict[str, AcqFile] = {}  # the part before a shape/dtype roll (late outputs)
        self.closed_parts: Recent = Recent()  # acq -> [(path, shape)] closed while outputs may follow
        self.failed: Recent = Recent()  # acquisitions whose recording stopped on a disk error
        self.full: set[str] = set()  # acquisitions whose current part passed max_file_bytes
        self.evicted = Evicted()  # parts closed for max_open_files: their raw frames continue there
        self.files_log = RateLimitedLog(log)  # closes / reopens for the bound: per frame when thrashing

    def _reopen_for(self, acq: str, shape: tuple[int, int], want: Path | None = None) -> AcqFile | None:
        """The closed part ``want`` (or the latest of this shape) of ``acq``, opened again for a late output.

        Outputs trail their raw frames by the denoising latency; a part closed in between (idle, too
        many files open, a new series_start) must not lose them. None if there is no such part.
        """
        closed = self.closed_parts.get(acq, [])
        if want is not None and want.exists() and all(p != want for p, _ in closed):
            closed = [(want, shape)]  # ours (PartIndex), closed longer ago than PARTS_KEPT parts
        for path, part_shape in reversed(closed):
            if (path != want if want is not None else part_shape != shape) or not path.exists():
                continue
            self._make_room()
            af = AcqFile.reopen(path, self.s)
            before = self.previous.pop(acq, None)  # for outputs only: new raw frames open their own part
            if before is not None:
                self._shut(before)
            self.previous[acq] = af
            self._gauge()
            log.debug("reopened %s for late outputs of %s", path, acq)
            return af
        return None

    def _continue(self, acq: str, path: Path, closed_at: float) -> AcqFile:
        """``acq``'s current part, closed to keep ``max_open_files`` (``Evicted``), reopened for its raw
        frames: more acquisitions are active at once than files may be open."""
        af = self.previous.get(acq)
        if af is not None and af.path == path:  # reopened meanwhile for late outputs
            del self.previous[acq]
        else:
            self._make_room()
            af = AcqFile.reopen(path, self.s)
        self.files[acq] = af
        self._gauge()
        msg = (
            "%s: its part was closed %.1f s ago to keep record.max_open_files = %d and is reopened: more "
            "acquisitions are active at once than that (a close and a reopen per frame; raise the bound)"
        )
        what = "parts reopened for record.max_open_files"
        self.files_log.log("reopen", logging.WARNING, what, msg, acq, time.monotonic() - closed_at,
                           self.s.max_open_files)  # fmt: skip
        return af

    def _make_room(self) -> None:
        """Close the least recently used files until one more may open (``max_open_files``)."""
        while len(self.files) + len(self.previous) >= self.s.max_open_files:
            acq, af = min([*self.files.items(), *self.previous.items()], key=lambda kv: kv[1].last_used)
            msg, n = "closing %s: %d files open (record.max_open_files)", self.s.max_open_files
            self.files_log.log("max_open", logging.INFO, "parts closed for max_open_files", msg, af.path, n)
            self._close_file(acq, af, "max_open")

    def _close_file(self, acq: str, af: AcqFile, reason: str) -> None:
        current = self.files.get(acq) is af
        if current:
            del self.files[acq]
            self.full.discard(acq)
        elif self.previous.get(acq) is af:
            del self.previous[acq]
        self.metrics.record_files_closed.labels(reason=reason).inc()
        if self._shut(af) and current and reason == "max_open" and acq not in self.full:
            self.evicted.add(acq, af.path, af.shape, af.raw_dtype, time.monotonic())

    def _shut(self, af: AcqFile) -> bool:
        try:
            af.flush()
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("flushing %s failed: %s", af.path, exc)
            af.abandon()
            self._gauge()
            return False
        af.close()
        self._remember_closed(af)
        self._gauge()
        return True

    def _remember_closed(self, af: AcqFile) -> None:
        parts = [p for p in self.closed_parts.get(af.acq, []) if p[0] != af.path][-(PARTS_KEPT - 1) :]
        self.closed_parts[af.acq] = [*parts, (af.path, af.shape)]

    def _drop(self, acq: str, reason: str) -> bool:
        """Close both parts of ``acq`` (if open), counted under ``reason``; True if any was open."""
        found = False
        for table in (self.files, self.previous):
            af = table.get(acq)
            if af is not None:
                self._close_file(acq, af, reason)
                found = True
        return found

    def _gauge(self) -> None:
        self.metrics.record_open_files.set(len(self.files) + len(self.previous))

    def _fail(self, acq: str, exc: Exception) -> None:
        kind = "disk_full" if is_disk_full(exc) else "io"
        self.metrics.record_errors.labels(kind=kind).inc()
        self.metrics.record_dropped.inc()
        log.error("recording of %s stopped (%s): %s", acq, kind, exc)
        self.failed[acq] = True
        self.evicted.forget(acq)
        for table in (self.files, self.previous):
            af = table.pop(acq, None)
            if af is not None:
                af.abandon()  # never close a file HDF5 failed to write: freeing it crashed the process
        self._gauge()

    def close(self, acq: str) -> None:
        """Flush and close every open part of ``acq`` (series start / end, shutdown)."""
        self.full.discard(acq)
        self.evicted.forget(acq)
        for table in (self.files, self.previous):
            af = table.pop(acq, None)
            if af is None:
                continue
            try:
                af.flush()
            except (OSError, RuntimeError, ValueError) as exc:
                table[acq] = af
                self._fail(acq, exc)
                continue
            af.close()
            self._remember_closed(af)
        self._gauge()

    def close_all(self) -> None:
        for acq in list({**self.files, **self.previous}):
            self.close(acq)
