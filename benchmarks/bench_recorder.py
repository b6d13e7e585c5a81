"""Recorder rate against the detector rate: counted Poisson frames into SWMR HDF5, flushed per frame.

python -m benchmarks.bench_recorder [--quick] [--dir /path/on/the/target/disk]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import table, write_result
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

DETECTOR_HZ = 40.0


def run(shape: tuple[int, int], dtype: str, n: int, compression: str, directory: Path) -> dict:
    rng = np.random.default_rng(0)
    pool = [rng.poisson(0.45, shape).astype(dtype) for _ in range(4)]
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        rec = Recorder(RecordSettings(directory=d, compression=compression, min_free_bytes=0), Metrics())
        rec.write(RecordItem("raw", "warm", 0, 0.0, pool[0]))
        rec.close_all()
        t0 = time.perf_counter()
        for s in range(n):
            rec.write(RecordItem("raw", "bench", s, float(s), pool[s % len(pool)]))
        rec.close_all()
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in d.glob("bench*.h5"))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    fps = n / dt
    raw_bytes = n * pool[0].nbytes
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "dtype": dtype,
        "compression": compression,
        "frames": n,
        "fps": fps,
        "x_detector_40Hz": fps / DETECTOR_HZ,
        "MBps_in": raw_bytes / dt / 1e6,
        "compression_ratio": raw_bytes / size,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    a = ap.parse_args()
    k = 1 if a.quick else 3
    results = []
    for comp in ("bitshuffle-lz4", "none"):
        results.append(run((1024, 1024), "uint16", 40 * k, comp, a.dir))
        results.append(run((3838, 3710), "uint8", 8 * k, comp, a.dir))
        results.append(run((3838, 3710), "uint16", 8 * k, comp, a.dir))
    path = write_result("bench_recorder", {"directory": str(a.dir), "results": results})
    print(
        table(
            results,
            ["shape", "dtype", "compression", "fps", "x_detector_40Hz", "MBps_in", "compression_ratio"],
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
