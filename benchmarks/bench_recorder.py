"""Recorder rate against the detector rate: counted Poisson frames into SWMR HDF5, flushed per frame.

python -m benchmarks.bench_recorder [--quick] [--dir /path/on/the/target/disk] [--threads N]

Frames go through the recorder's own thread and queue (``submit``), as in the service, so the
compressor pool (``record.compress_threads``) is measured; ``compress_threads = 0`` is the HDF5 filter
on the writer thread (the behaviour before the pool). ``per_core_fps`` is one thread compressing
alone (``codec.compress_framed``), the number to size a site by: per_core_fps x cores >= 80.
``denoised_pairs``: a raw uint16 frame and its denoised float32 frame per detector frame, as the service
records them (``record.denoised_dtype = "float16"``: the cast runs on the writer thread, ``StoredDtype``).
``round_robin``: many acquisitions interleaved (raw + denoised + llr of small frames), more than
``record.max_open_files``: the writer's frames/s with the queue filling as fast as items come, parts
closed for the bound, and the cost of a new part (layout, then the denoised / llr groups); ``burst``:
audit h30's many.py (80 new acquisitions x 3 frames at 250 frames/s, outputs 40 ms later) against the
default queue (512 items) and twice that: items NOT recorded.
"""

from __future__ import annotations

import argparse
import heapq
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_result
from sbd_stream.config import RecordSettings
from sbd_stream.formats import dectris_codec as codec
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

DETECTOR_HZ = 40.0


def frames(shape: tuple[int, int], dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.poisson(0.45, shape).astype(dtype) for _ in range(4)]


def per_core_fps(shape: tuple[int, int], dtype: str, n: int) -> float:
    """Frames/s one thread compresses to bitshuffle-LZ4 chunks (the pool's unit of work)."""
    pool = frames(shape, dtype)

    def work() -> float:  # on a thread of its own, as in the recorder's pool
        codec.compress_framed(pool[0])
        t0 = time.perf_counter()
        for s in range(n):
            codec.compress_framed(pool[s % len(pool)])
        return n / (time.perf_counter() - t0)

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(work).result()


def writer_fps(shape: tuple[int, int], dtype: str, n: int, directory: Path) -> float:
    """Frames/s the writer thread stores already-compressed chunks (``write_direct_chunk``, flushed)."""
    pool = frames(shape, dtype)
    chunks = [codec.compress_framed(a) for a in pool]
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        rec = Recorder(RecordSettings(directory=d, min_free_bytes=0, compress_threads=0), Metrics())
        rec.write(RecordItem("raw", "warm", 0, 0.0, pool[0], chunk=chunks[0]))
        rec.close_all()
        t0 = time.perf_counter()
        for s in range(n):
            rec.write(RecordItem("raw", "bench", s, float(s), pool[s % 4], chunk=chunks[s % 4]))
        rec.close_all()
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(shape: tuple[int, int], dtype: str, n: int, compression: str, directory: Path, threads: int) -> dict:
    pool = frames(shape, dtype)
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        settings = RecordSettings(
            directory=d, compression=compression, min_free_bytes=0, compress_threads=threads
        )
        warm = Recorder(settings, Metrics())
        warm.write(RecordItem("raw", "warm", 0, 0.0, pool[0]))
        warm.close_all()
        metrics = Metrics()
        rec = Recorder(settings, metrics, queue_frames=n + 8, queue_bytes=(n + 8) * pool[0].nbytes)
        rec.start()
        t0 = time.perf_counter()
        for s in range(n):
            assert rec.submit(RecordItem("raw", "bench", s, float(s), pool[s % len(pool)]))
        rec.stop()
        rec.join()
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in d.glob("bench*.nxs"))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    fps = n / dt
    raw_bytes = n * pool[0].nbytes
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "dtype": dtype,
        "compression": compression,
        "compress_threads": threads if compression == "bitshuffle-lz4" else None,
        "frames": n,
        "fps": fps,
        "x_detector_40Hz": fps / DETECTOR_HZ,
        "MBps_in": raw_bytes / dt / 1e6,
        "compression_ratio": raw_bytes / size,
    }


def run_pairs(shape: tuple[int, int], n: int, directory: Path, threads: int) -> dict:
    """Raw + denoised frame pairs/s through the recorder's thread and pool (the denoised cast to float16)."""
    raw = frames(shape, "uint16")
    rng = np.random.default_rng(1)
    yy = np.linspace(0, 40, shape[0], dtype=np.float32)[:, None]
    smooth = 0.45 + 0.1 * np.sin(yy) * np.cos(np.linspace(0, 40, shape[1], dtype=np.float32))
    den = [(smooth + rng.normal(0, 0.02, shape)).astype(np.float32) for _ in range(len(raw))]
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        settings = RecordSettings(directory=d, min_free_bytes=0, compress_threads=threads)
        rec = Recorder(settings, Metrics(), queue_frames=2 * n + 8, queue_bytes=(2 * n + 8) * den[0].nbytes)
        rec.start()
        t0 = time.perf_counter()
        for s in range(n):
            assert rec.submit(RecordItem("raw", "pairs", s, float(s), raw[s % len(raw)]))
            assert rec.submit(RecordItem("denoised", "pairs", s, float(s), den[s % len(den)]))
        rec.stop()
        rec.join()
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "raw": "uint16",
        "denoised": f"float32 -> {settings.denoised_dtype}",
        "compress_threads": threads,
        "pairs": n,
        "pairs_per_s": n / dt,
        "x_detector_40Hz": n / dt / DETECTOR_HZ,
    }


def _rr_items(n_acq: int, rounds: int, shape: tuple[int, int]) -> list[tuple[float, RecordItem]]:
    """(due, item): raw frames round-robin every 4 ms (250/s), each frame's denoised and llr 40 ms later."""
    raw = frames(shape, "uint16")[0]
    den = raw.astype(np.float32)
    out: list[tuple[float, int, RecordItem]] = []
    for rx in range(n_acq * rounds):
        acq, seq, t = f"rr-{rx % n_acq:02d}", rx // n_acq, 0.004 * rx
        out.append((t, 3 * rx, RecordItem("raw", acq, seq, float(seq), raw, rx=rx)))
        out.append((t + 0.04, 3 * rx + 1, RecordItem("denoised", acq, seq, float(seq), den, rx=rx)))
        out.append((t + 0.04, 3 * rx + 2, RecordItem("llr", acq, seq, float(seq), den, rx=rx)))
    heapq.heapify(out)
    return [(due, item) for due, _, item in (heapq.heappop(out) for _ in range(len(out)))]


def run_round_robin(n_acq: int, rounds: int, max_open: int, directory: Path, threads: int) -> dict:
    """The writer's rate over interleaved acquisitions: every item submitted at once (nothing refused)."""
    items = _rr_items(n_acq, rounds, (32, 32))
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        m = Metrics()
        s = RecordSettings(directory=d, min_free_bytes=0, max_open_files=max_open, compress_threads=threads)
        rec = Recorder(s, m, queue_frames=len(items) + 8)
        rec.start()
        t0 = time.perf_counter()
        for _, item in items:
            assert rec.submit(item)
        rec.stop()
        rec.join()
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "acquisitions": n_acq,
        "max_open_files": max_open,
        "frames": n_acq * rounds,
        "frames_per_s": n_acq * rounds / dt,
        "closed_for_bound": m.value("sbd_record_files_closed_total", {"reason": "max_open"}),
    }


def run_burst(queue_frames: int, directory: Path, threads: int, n_acq: int = 80) -> dict:
    """many.py on the recorder alone, paced as sent: 80 new acquisitions x 3 frames at 250 frames/s."""
    items = _rr_items(n_acq, 3, (32, 32))
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        m = Metrics()
        s = RecordSettings(directory=d, min_free_bytes=0, compress_threads=threads)  # max_open_files 16
        rec = Recorder(s, m, queue_frames=queue_frames)
        rec.start()
        t0 = time.perf_counter()
        for due, item in items:
            if (wait := t0 + due - time.perf_counter()) > 0:
                time.sleep(wait)
            rec.submit(item)
        rec.stop()
        rec.join()
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "queue_frames": queue_frames,
        "items": len(items),
        "not_recorded": m.value("sbd_record_dropped_total"),
        "written_by_s": dt,
    }


def new_part_ms(directory: Path, n: int = 20) -> dict:
    """ms of the writer per new part: its layout with the first raw frame, then each output group."""
    raw = frames((32, 32), "uint16")[0]
    den = raw.astype(np.float32)
    d = Path(tempfile.mkdtemp(dir=directory))
    cost = {"raw": 0.0, "denoised": 0.0, "llr": 0.0, "append_3_open": 0.0, "reopen_and_3": 0.0}
    try:
        rec = Recorder(RecordSettings(directory=d, min_free_bytes=0, compress_threads=0), Metrics())
        for k in range(n):
            for kind, data in (("raw", raw), ("denoised", den), ("llr", den)):
                t0 = time.perf_counter()
                rec.write(RecordItem(kind, f"p{k}", 0, 0.0, data, rx=3 * k))
                cost[kind] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for kind, data in (("raw", raw), ("denoised", den), ("llr", den)):
                rec.write(RecordItem(kind, f"p{k}", 1, 1.0, data, rx=3 * k + 1))
            cost["append_3_open"] += time.perf_counter() - t0
            rec.close_all()
            t0 = time.perf_counter()  # a part closed for max_open_files, its next frame and outputs
            rec.evicted.add(
                f"p{k}", rec.closed_parts[f"p{k}"][-1][0], (32, 32), np.dtype("uint16"), time.monotonic()
            )
            for kind, data in (("raw", raw), ("denoised", den), ("llr", den)):
                rec.write(RecordItem(kind, f"p{k}", 2, 2.0, data, rx=3 * k + 2))
            cost["reopen_and_3"] += time.perf_counter() - t0
            rec.close_all()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {k: 1e3 * v / n for k, v in cost.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--threads", type=int, default=RecordSettings().compress_threads)
    a = ap.parse_args()
    k = 1 if a.quick else 3
    k2 = (3838, 3710)
    results = []
    for threads in sorted({0, a.threads}):
        results.append(run((1024, 1024), "uint16", 40 * k, "bitshuffle-lz4", a.dir, threads))
        results.append(run(k2, "uint8", 16 * k, "bitshuffle-lz4", a.dir, threads))
        results.append(run(k2, "uint16", 16 * k, "bitshuffle-lz4", a.dir, threads))
    results.append(run((1024, 1024), "uint16", 40 * k, "none", a.dir, 0))
    results.append(run(k2, "uint8", 8 * k, "none", a.dir, 0))
    results.append(run(k2, "uint16", 8 * k, "none", a.dir, 0))
    pairs = [run_pairs((1024, 1024), 40 * k, a.dir, a.threads), run_pairs(k2, 12 * k, a.dir, a.threads)]
    rr = [run_round_robin(n, 3 * k, mo, a.dir, a.threads) for n, mo in ((80, 16), (80, 128), (16, 16))]
    burst = [run_burst(q, a.dir, a.threads) for q in (512, 1024)]
    part_ms = new_part_ms(a.dir, 10 * k)
    per_core = {dt: per_core_fps(k2, dt, 8 * k) for dt in ("uint8", "uint16")}
    writer = {dt: writer_fps(k2, dt, 8 * k, a.dir) for dt in ("uint8", "uint16")}
    # cores busy per second at 80 frames/s: the pool's compression plus the writer thread
    cores = {dt: int(np.ceil(2 * DETECTOR_HZ * (1 / per_core[dt] + 1 / writer[dt]))) for dt in per_core}
    path = write_result(
        "bench_recorder",
        {
            "directory": str(a.dir),
            "compress_backend": codec.compress_backends()[0],
            "cpus": os.cpu_count(),
            "k2_per_core_compress_fps": per_core,
            "k2_writer_direct_chunk_fps": writer,
            "k2_cores_for_2x_detector": cores,
            "results": results,
            "denoised_pairs": pairs,
            "round_robin": rr,
            "burst_80_new_acquisitions": burst,
            "new_part_ms": part_ms,
        },
    )
    cols = ["shape", "dtype", "compression", "compress_threads", "fps", "x_detector_40Hz", "MBps_in"]
    print(table(results, [*cols, "compression_ratio"]))
    print(table(pairs, ["shape", "raw", "denoised", "compress_threads", "pairs_per_s", "x_detector_40Hz"]))
    print(
        f"K2 per-core compression ({codec.compress_backends()[0]}): {per_core} frames/s; writer {writer};"
        f" cores for 80/s: {cores}"
    )
    print(table(rr, ["acquisitions", "max_open_files", "frames", "frames_per_s", "closed_for_bound"]))
    print(table(burst, ["queue_frames", "items", "not_recorded", "written_by_s"]))
    print(f"writer ms per new part and per reopen: {part_ms}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
