"""HDF5 recorder: one SWMR file per acquisition, rolled at a size limit, every frame flushed.

Layout (format ``sbd-recording/1``, see docs/service.md): groups ``raw``, ``denoised``, ``llr``, each
with ``frames`` (N,H,W) chunked one frame per chunk and compressed, ``seq`` int64, ``ts`` float64
and ``complete`` uint8. ``complete`` is resized and set last, after the frame is written, so a live
reader or a reader of a crashed file trusts exactly ``len(complete)`` frames. All objects are created
before SWMR mode is switched on, as SWMR requires. A disk error is counted and ends recording of that
acquisition; the service keeps running.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # registers bitshuffle/LZ4 for writing and for every reader of a recording
import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.frames import FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.sources.dectris.codec import HEADER
from sbd_stream.worker import BackgroundWorker, consume

log = logging.getLogger(__name__)

FORMAT = "sbd-recording/1"
KINDS = ("raw", "denoised", "llr")


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


def _compression(name: str) -> dict[str, Any]:
    if name == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    return {}


BSHUF_FILTER_ID = 32008
BSHUF_LZ4 = 2  # bitshuffle filter's cd_values[4]: 2 = LZ4 after the shuffle (0 = none, 3 = zstd)


def _takes_detector_chunks(ds: h5py.Dataset) -> bool:
    """True when a bitshuffle-LZ4 chunk framed as the HDF5 filter frames it can be stored as is.

    The filter pipeline must be exactly one bitshuffle filter with LZ4 (any block size: the filter
    reads a chunk's block size from its own 12-byte header when decoding) and the dataset little-endian,
    as DECTRIS detectors send. Checked on the dataset actually created, not on the settings.
    """
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1 or ds.dtype.byteorder not in ("<", "=", "|"):
        return False
    fid, _flags, cd, _name = plist.get_filter(0)
    return fid == BSHUF_FILTER_ID and len(cd) > 4 and cd[4] == BSHUF_LZ4 and np.little_endian


def _safe_name(acq: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", acq)[:120] or "acq"


def open_recording(path: str | os.PathLike) -> h5py.File:
    """Open a recording for reading, live or after a crash (SWMR read mode tolerates both)."""
    return h5py.File(path, "r", libver="latest", swmr=True)


class _AcqFile:
    """The open file of one acquisition and its append positions."""

    def __init__(
        self, path: Path, shape: tuple[int, int], raw_dtype: np.dtype, s: RecordSettings, attrs: dict
    ) -> None:
        self.path = path
        self.shape = shape
        self.raw_dtype = np.dtype(raw_dtype)
        self.f = h5py.File(path, "w", libver="latest")
        comp = _compression(s.compression)
        kinds = ["raw"] + (["denoised"] if s.record_denoised else []) + (["llr"] if s.record_llr else [])
        self.n: dict[str, int] = {}
        for kind in kinds:
            g = self.f.create_group(kind)
            dt = raw_dtype if kind == "raw" else np.float32
            g.create_dataset(
                "frames", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=dt, **comp
            )
            for name, dtype in (("seq", np.int64), ("ts", np.float64), ("complete", np.uint8)):
                g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(4096,), dtype=dtype)
            self.n[kind] = 0
        for k, v in attrs.items():
            self.f.attrs[k] = v
        self.direct_raw = s.compression == "bitshuffle-lz4" and _takes_detector_chunks(self.f["raw/frames"])
        self.f.swmr_mode = True
        self.since_flush = 0

    def append(self, kind: str, seq: int, ts: float, data: np.ndarray, chunk: bytes | None = None) -> bool:
        """Append one frame; returns True when ``chunk`` was stored as is (no recompression)."""
        g = self.f[kind]
        i = self.n[kind]
        fr = g["frames"]
        fr.resize(i + 1, axis=0)
        direct = chunk is not None and kind == "raw" and self._write_chunk(fr, i, data, chunk)
        if not direct:
            fr[i] = data
        for name, val in (("seq", seq), ("ts", ts)):
            g[name].resize(i + 1, axis=0)
            g[name][i] = val
        g["complete"].resize(i + 1, axis=0)
        g["complete"][i] = 1
        self.n[kind] = i + 1
        self.since_flush += 1
        return direct

    def _write_chunk(self, fr: h5py.Dataset, i: int, data: np.ndarray, chunk: bytes) -> bool:
        """Store the detector's chunk for frame ``i``; False (write ``data`` instead) on any mismatch."""
        if not self.direct_raw or data.dtype != fr.dtype or tuple(data.shape) != fr.shape[1:]:
            return False
        if len(chunk) < HEADER.size or HEADER.unpack_from(chunk, 0)[0] != data.nbytes:
            return False
        try:
            fr.id.write_direct_chunk((i, 0, 0), bytes(chunk))
        except (OSError, RuntimeError, ValueError, TypeError):
            log.warning("direct chunk write failed; recompressing instead", exc_info=True)
            return False
        return True

    def flush(self) -> None:
        self.f.flush()
        self.since_flush = 0

    def close(self) -> None:
        try:
            self.f.close()
        except Exception:
            log.warning("closing %s failed", self.path, exc_info=True)


class Recorder(BackgroundWorker):
    """Consumes RecordItems on its own thread; owns every open file."""

    thread_name = "sbd-recorder"

    def __init__(
        self,
        settings: RecordSettings,
        metrics: Metrics,
        card: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        queue_frames: int = 512,
        queue_bytes: int = 2 * 1024**3,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.s, self.metrics = settings, metrics
        self.card = card or {}
        self.sampling = sampling or {}
        self.run_config = run_config or {}
        self.queue = FrameQueue(queue_frames, max_bytes=queue_bytes)
        self.files: dict[str, _AcqFile] = {}
        self.paths: dict[str, list[Path]] = {}
        self.failed: set[str] = set()
        self.series_meta: dict[str, dict] = {}
        self._init_worker()
        self.directory = Path(settings.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    # --- producer side (never blocks) -------------------------------------------------------------
    def record(
        self, kind: str, header: FrameHeader, data: np.ndarray | None = None, chunk: bytes | None = None
    ) -> bool:
        """Queue one frame of ``kind`` (raw | denoised | llr) named by its header."""
        return self.submit(RecordItem(kind, header.acq, header.seq, header.ts, data, chunk=chunk))

    def submit(self, item: RecordItem) -> bool:
        nbytes = 0 if item.data is None else int(item.data.nbytes)
        nbytes += 0 if item.chunk is None else len(item.chunk)
        ok = self.queue.put(item, nbytes)
        self.metrics.queue_depth.labels(queue="record").set(len(self.queue))
        if not ok:
            self.metrics.record_dropped.inc()
            log.error("recorder queue full: %s frame %s of %s NOT recorded", item.kind, item.seq, item.acq)
        return ok

    # --- consumer side ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish what is queued, then close every file."""
        self.queue.close()

    def _run(self) -> None:
        try:
            consume(self.queue, self.write, self.metrics.queue_depth.labels(queue="record").set)
        finally:
            self.close_all()

    def write(self, item: RecordItem) -> None:
        """Write one item synchronously (the thread's body; also usable without a thread)."""
        if item.kind == "series_start":
            self.close(item.acq)
            self.failed.discard(item.acq)
            self.series_meta[item.acq] = item.meta
            return
        if item.kind == "series_end":
            self.close(item.acq)
            return
        if item.data is None or item.kind not in KINDS:
            return
        if item.acq in self.failed:
            self.metrics.record_dropped.inc()
            return
        t0 = time.perf_counter()
        try:
            self._check_space(item.data.nbytes)
            af = self._file_for(item)
            if af is None or item.kind not in af.n:
                return
            if af.append(item.kind, item.seq, item.ts, item.data, item.chunk):
                self.metrics.record_direct_chunks.inc()
            if af.since_flush >= self.s.flush_every:
                af.flush()
                if os.path.getsize(af.path) >= self.s.max_file_bytes:
                    self._roll(item.acq)
        except (OSError, RuntimeError, ValueError) as exc:  # h5py reports write failures as all three
            self._fail(item.acq, exc)
            return
        self.metrics.frames_recorded.labels(kind=item.kind).inc()
        self.metrics.stage_latency.labels(stage="record").observe(time.perf_counter() - t0)

    def _check_space(self, nbytes: int) -> None:
        """Refuse before writing when the disk is nearly full.

        HDF5 does not reliably report ENOSPC at the write call (the chunk cache and metadata cache
        defer the failing writes, whose errors then surface at close or not at all), so the free
        space is checked up front: one statvfs per frame.
        """
        st = os.statvfs(self.directory)
        free = st.f_bavail * st.f_frsize
        need = max(self.s.min_free_bytes, 4 * nbytes)
        if free < need:
            raise OSError(errno.ENOSPC, f"only {free} bytes free in {self.directory}, need {need}")

    def _file_for(self, item: RecordItem) -> _AcqFile | None:
        af = self.files.get(item.acq)
        if af is not None:
            return af
        if item.kind != "raw":
            return None  # outputs of an acquisition whose raw file is closed or never opened
        assert item.data is not None
        return self._open(item.acq, tuple(item.data.shape), item.data.dtype)  # type: ignore[arg-type]

    def _open(self, acq: str, shape: tuple[int, int], dtype: np.dtype) -> _AcqFile:
        paths = self.paths.setdefault(acq, [])
        stem = _safe_name(acq)
        name = f"{stem}.h5" if not paths else f"{stem}_{len(paths):04d}.h5"
        path = self.directory / name
        if not paths and path.exists():  # never overwrite an earlier recording
            path = self.directory / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}.h5"
        attrs = {
            "format": FORMAT,
            "acq": acq,
            "part": len(paths),
            "created": time.time(),
            "engine_card": json.dumps(self.card, default=str),
            "run_config": json.dumps(self.run_config, default=str),
            "series_meta": json.dumps(self.series_meta.get(acq, {}), default=str),
            **self.sampling,  # pixel_size_A, dose_e_per_A2, counts_per_px, bin, working_pixel_A
        }
        af = _AcqFile(path, shape, dtype, self.s, attrs)
        paths.append(path)
        self.files[acq] = af
        log.info("recording %s to %s", acq, path)
        return af

    def _roll(self, acq: str) -> None:
        af = self.files.pop(acq)
        af.close()
        self._open(acq, af.shape, af.raw_dtype)

    def _fail(self, acq: str, exc: Exception) -> None:
        no_space = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        text = str(exc).lower()
        no_space = no_space or "no space" in text or "errno = 28" in text or "file too large" in text
        kind = "disk_full" if no_space else "io"
        self.metrics.record_errors.labels(kind=kind).inc()
        self.metrics.record_dropped.inc()
        log.error("recording of %s stopped (%s): %s", acq, kind, exc)
        self.failed.add(acq)
        af = self.files.pop(acq, None)
        if af is not None:
            af.close()

    def close(self, acq: str) -> None:
        af = self.files.pop(acq, None)
        if af is not None:
            try:
                af.flush()
            except (OSError, RuntimeError, ValueError) as exc:
                self._fail(acq, exc)
                return
            af.close()

    def close_all(self) -> None:
        for acq in list(self.files):
            self.close(acq)
