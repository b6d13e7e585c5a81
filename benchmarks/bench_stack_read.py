"""Reading a stack chunk by chunk, as an offline Dask worker does: each file layout, opened per chunk
(the old worker) against opened once per process (``sources/stack_cache``, what workers do now).

A TIFF written a page at a time (a ``TiffWriter`` loop, ``imwrite(append=True)``, most acquisition
software) has one series per page: opening it walks every page's directory, so a worker that opened it
for each chunk spent time in proportion to the pages squared. The other layouts are the controls:
an ImageJ / shaped TIFF (memory-mapped), the same pages zlib-compressed, NPY and HDF5. Every read is
checked against the frames written.

    python -m benchmarks.bench_stack_read [--frames 2000] [--size 64] [--chunk 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import tifffile

from benchmarks.common import machine, table, write_result
from sbd_stream.invocation import invocation
from sbd_stream.sources import stack_cache
from sbd_stream.sources.stacks import open_stack


def write_layouts(folder: Path, frames: np.ndarray) -> dict[str, Path]:
    """The same frames in each layout a user's tools write."""
    paths = {k: folder / n for k, n in (("tiff, page by page", "pages.tif"), ("tiff, page by page, zlib",
             "pages_zlib.tif"), ("tiff, one series (imagej)", "imagej.tif"), ("npy", "f.npy"),
             ("hdf5", "f.h5"))}  # fmt: skip
    with tifffile.TiffWriter(paths["tiff, page by page"]) as tw:
        for fr in frames:
            tw.write(fr)
    with tifffile.TiffWriter(paths["tiff, page by page, zlib"]) as tw:
        for fr in frames:
            tw.write(fr, compression="zlib")
    tifffile.imwrite(paths["tiff, one series (imagej)"], frames, imagej=True)
    np.save(paths["npy"], frames)
    with h5py.File(paths["hdf5"], "w") as f:
        f["frames"] = frames
    return paths


def per_chunk(path: Path, n: int, chunk: int) -> list[np.ndarray]:
    """The old worker: the file opened and closed again for every chunk."""
    out = []
    for a in range(0, n, chunk):
        s = open_stack(path)
        try:
            out.append(np.array(s.frames[a : a + chunk]))
        finally:
            s.close()
    return out


def kept_open(path: Path, n: int, chunk: int) -> list[np.ndarray]:
    """Today's worker (``offline_dask.read_frames``): opened once, kept open for the job."""
    try:
        return [stack_cache.read_rows(path, None, a, min(n, a + chunk)) for a in range(0, n, chunk)]
    finally:
        stack_cache.close_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="frame side, pixels (small: the reading is timed)")
    ap.add_argument("--chunk", type=int, default=16, help="frames per chunk (offline_dask's default)")
    a = ap.parse_args()
    frames = np.random.default_rng(0).poisson(0.45, (a.frames, a.size, a.size)).astype(np.uint16)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_stack_read_") as tmp:
        for layout, path in write_layouts(Path(tmp), frames).items():
            row: dict = {"layout": layout, "file_MB": round(path.stat().st_size / 1e6, 2)}
            for name, fn in (("per_chunk_s", per_chunk), ("kept_open_s", kept_open)):
                t0 = time.perf_counter()
                got = fn(path, a.frames, a.chunk)
                row[name] = round(time.perf_counter() - t0, 3)
                if not np.array_equal(np.concatenate(got), frames):
                    raise SystemExit(f"{layout}, {name}: the frames read differ from those written")
            row["speed_up"] = round(row["per_chunk_s"] / max(row["kept_open_s"], 1e-6), 1)
            rows.append(row)
    payload = {
        "benchmark": "bench_stack_read",
        "command": "python -m " + invocation("benchmarks.bench_stack_read"),
        "machine": machine(),
        "frames": a.frames, "frame": [a.size, a.size], "chunk_frames": a.chunk,
        "rows": rows,
    }  # fmt: skip
    print(table(rows, ["layout", "file_MB", "per_chunk_s", "kept_open_s", "speed_up"]))
    print(f"wrote {write_result('stack_read', payload)}")


if __name__ == "__main__":
    main()
