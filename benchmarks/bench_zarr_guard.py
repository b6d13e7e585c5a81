"""Reading a zarr store through the guard (``sources/stack_zarr_guard.py``, what ``open_stack`` and so
``denoise`` read with) against zarr's own unguarded read of the same store, for each compressor.

Why: the guard bounds each chunk's decoded size before numcodecs allocates it. For gzip / zlib / bz2 /
lzma (no size in their header) it once did that by decoding the whole chunk, and numcodecs then decoded
it again: twice the decode work on every read. Every read is checked against the frames written, and
the guarded read against zarr's own.

    python -m benchmarks.bench_zarr_guard [--frames 64] [--size 1024] [--batch 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
import zarr.codecs
import zarr.codecs.numcodecs as zn
from zarr.storage import LocalStore

from benchmarks.common import machine, table, write_result
from sbd_stream.invocation import invocation
from sbd_stream.sources.stacks import open_stack

CODECS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    # name: (zarr v2 compressor, zarr v3 bytes-to-bytes codec), each as zarr's own API writes them
    "gzip": (lambda: numcodecs.GZip(5), lambda: zarr.codecs.GzipCodec(level=5)),
    "zlib": (lambda: numcodecs.Zlib(5), lambda: zn.Zlib(level=5)),
    "bz2": (lambda: numcodecs.BZ2(5), lambda: zn.BZ2(level=5)),
    "lzma": (lambda: numcodecs.LZMA(preset=1), lambda: zn.LZMA(preset=1)),
    "blosc": (lambda: numcodecs.Blosc("lz4", 5), lambda: zarr.codecs.BloscCodec(cname="lz4", clevel=5)),
    "lz4": (lambda: numcodecs.LZ4(), lambda: zn.LZ4()),
    "zstd": (lambda: numcodecs.Zstd(3), lambda: zarr.codecs.ZstdCodec(level=3)),
}


def write_store(path: Path, frames: np.ndarray, codec: str, fmt: Literal[2, 3]) -> Path:
    """``frames`` as a zarr array of one frame a chunk, compressed with ``codec``, in zarr format ``fmt``."""
    comp = CODECS[codec][0 if fmt == 2 else 1]()
    arr = zarr.create_array(store=str(path), shape=frames.shape, chunks=(1, *frames.shape[1:]),
                            dtype=frames.dtype, compressors=comp, zarr_format=fmt)  # fmt: skip
    arr[:] = frames
    return path


def guarded(path: Path, n: int, batch: int) -> np.ndarray:
    """The stack reader's frame iteration (``open_stack``: the guarded store), a batch at a time."""
    s = open_stack(path)
    try:
        return np.concatenate([np.asarray(s.frames[a : a + batch]) for a in range(0, n, batch)])
    finally:
        s.close()


def unguarded(path: Path, n: int, batch: int) -> np.ndarray:
    """zarr's own read of the same store (``LocalStore``, no checks), a batch at a time."""
    arr = zarr.open_array(store=LocalStore(path, read_only=True), mode="r")
    return np.concatenate([np.asarray(arr[a : a + batch]) for a in range(0, n, batch)])


def best(fn: Callable[[Path, int, int], np.ndarray], path: Path, a: argparse.Namespace) -> tuple[Any, ...]:
    """The best of ``a.repeat`` reads: wall seconds, CPU seconds of this process (every thread: zarr decodes
    in threads; less swayed by other processes on a shared machine), and what the last one read."""
    walls, cpus, got = [], [], None
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        got = fn(path, a.frames, a.batch)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024, help="frame side, pixels")
    ap.add_argument("--batch", type=int, default=8, help="frames read at a time")
    ap.add_argument("--repeat", type=int, default=2, help="reads timed per store (the best is kept)")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma-separated, of: " + ", ".join(CODECS))
    ap.add_argument("--label", default="", help="a note kept with the numbers (e.g. before / after a fix)")
    ap.add_argument("--out", default="zarr_guard", help="results file name under benchmarks/results")
    a = ap.parse_args()
    frames = np.random.default_rng(0).poisson(1.0, (a.frames, a.size, a.size)).astype("<f4")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_zarr_guard_") as tmp:
        for codec in a.codecs.split(","):
            for fmt in (2, 3):
                path = write_store(Path(tmp) / f"{codec}_v{fmt}.zarr", frames, codec, fmt)
                stored = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                t_raw, c_raw, raw = best(unguarded, path, a)
                t_guard, c_guard, got = best(guarded, path, a)
                if not (np.array_equal(raw, frames) and np.array_equal(got, frames)):
                    raise SystemExit(f"{codec} v{fmt}: the frames read differ from those written")
                rows.append({"codec": codec, "zarr": fmt, "stored_MB": round(stored / 1e6, 1),
                             "zarr_s": round(t_raw, 3), "guarded_s": round(t_guard, 3),
                             "zarr_cpu_s": round(c_raw, 3), "guarded_cpu_s": round(c_guard, 3),
                             "cpu_guarded_over_zarr": round(c_guard / max(c_raw, 1e-9), 2)})  # fmt: skip
                print(rows[-1], flush=True)
                for p in sorted(path.rglob("*"), reverse=True):  # the disk holds one store at a time
                    p.unlink() if p.is_file() else p.rmdir()
    payload = {
        "command": "python -m " + invocation("benchmarks.bench_zarr_guard"),
        "machine": machine(),
        "label": a.label,
        "frames": a.frames, "frame": [a.size, a.size], "dtype": "float32", "batch_frames": a.batch,
        "repeat": a.repeat, "rows": rows,
    }  # fmt: skip
    cols = ["codec", "zarr", "stored_MB", "zarr_s", "guarded_s", "zarr_cpu_s", "guarded_cpu_s"]
    print(table(rows, [*cols, "cpu_guarded_over_zarr"]))
    print(f"wrote {write_result(a.out, payload)}")


if __name__ == "__main__":
    main()
