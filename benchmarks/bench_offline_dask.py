"""Offline denoising throughput: single process (`denoise_file`) vs a Dask local cluster of N workers.

The same HDF5 stack (Poisson counts at the paper's K2 sampling: 0.060 A, 0.45 counts/px) is denoised
by `denoise_file` in this process and by `sbd_stream.service.offline_dask` on a local cluster with 1, 2,
... workers (1 thread each process, intra-op threads = cores // workers). Cluster runs are timed twice:
cold (cluster start + engine load in every worker, what one `sbd-stream denoise` command pays) and warm
(the same cluster again: engines cached, the steady rate). Every output is compared with the
single-process one bit for bit. The single process also runs with its intra-op threads pinned to 1
(what each worker of a 2-worker cluster on 2 cores uses), which separates the gain of parallel
processes from the cost of intra-op threads on a busy machine. The engine directory is copied first so
that every run uses the same weights even if training rewrites it meanwhile.

    python -m benchmarks.bench_offline_dask [--model NAME] [--frames 64] [--size 1024] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.common import machine, results_dir, stamped, table
from sbd_stream.config import DenoiseSettings
from sbd_stream.engines.card import resolve_engine_dir
from sbd_stream.invocation import invocation
from sbd_stream.service import offline_dask as od
from sbd_stream.service.offline import denoise_file


def _same(a: Path, b: Path) -> bool:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        return bool(np.array_equal(fa["denoised"][:], fb["denoised"][:]))


def _row(run: str, workers: int, threads: int | None, n: int, wall: float, single: float | None) -> dict:
    fps = n / wall
    return {
        "run": run,
        "workers": workers,
        "threads_per_worker": threads,
        "wall_s": wall,
        "frames_per_s": fps,
        "vs_single": fps / single if single else 1.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped engine)")
    ap.add_argument("--engine", default="onnxruntime", help="backend (onnxruntime: same bits at any threads)")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunk-frames", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    a = ap.parse_args()
    from distributed import LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench_offline_dask_"))
    try:
        engine = shutil.copytree(resolve_engine_dir(a.model), tmp / "engine")
        inp = tmp / "in.h5"
        with h5py.File(inp, "w") as f:
            rng = np.random.default_rng(0)
            f["frames"] = rng.poisson(0.45, (a.frames, a.size, a.size)).astype(np.uint16)
            f.attrs.update(pixel_size_A=0.060, counts_per_px=0.45)
        n = a.frames
        identical: dict[str, bool] = {}
        es = DenoiseSettings(engine=a.engine, model=str(engine), batch_frames=a.batch)

        def single(label: str, threads: int | None = None, out: str = "single.h5") -> tuple[dict, dict]:
            import torch

            before = torch.get_num_threads()
            if threads:  # torch and ONNX Runtime intra-op threads, as a worker would pin them
                torch.set_num_threads(threads)
                os.environ["SBD_ORT_THREADS"] = str(threads)
            try:
                (tmp / out).unlink(missing_ok=True)
                t0 = time.perf_counter()
                s = denoise_file(inp, tmp / out, settings=es)
                row = _row(label, 1, torch.get_num_threads(), n, time.perf_counter() - t0, None)
            finally:
                torch.set_num_threads(before)
                os.environ.pop("SBD_ORT_THREADS", None)
            return s, {**row, "frames_per_s_excl_load": s["frames_per_s"]}

        s, first = single("single process (denoise_file)")
        rows = [first]
        single_fps = first["frames_per_s"]
        if (os.cpu_count() or 1) > 1:
            _, one = single("single process, 1 thread", threads=1, out="single1.h5")
            rows.append({**one, "vs_single": one["frames_per_s"] / single_fps})
            identical["single_1_thread"] = _same(tmp / "single.h5", tmp / "single1.h5")
        cores = os.cpu_count() or 1
        for w in a.workers:
            threads = od.default_threads(cores, w)
            t0 = time.perf_counter()
            with LocalCluster(
                n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster:  # fmt: skip
                for run in ("cold", "warm"):
                    out = tmp / f"dask{w}_{run}.h5"
                    od.denoise(
                        inp, out, es=es.model_copy(update={"threads_per_worker": threads}),
                        scheduler=cluster.scheduler_address, batch=a.batch, chunk_frames=a.chunk_frames,
                    )  # fmt: skip
                    wall = time.perf_counter() - t0  # cold: from before the cluster started
                    rows.append(_row(f"dask local, {run}", w, threads, n, wall, single_fps))
                    identical[f"{w}_{run}"] = _same(tmp / "single.h5", out)
                    out.unlink()
                    t0 = time.perf_counter()
        _, last = single("single process again (drift check)")
        rows.append({**last, "vs_single": last["frames_per_s"] / single_fps})
        payload = {
            "command": "python -m " + invocation("benchmarks.bench_offline_dask"),
            "machine": machine(),
            "note": a.note,
            "engine": str(resolve_engine_dir(a.model)),
            "engine_id": s["engine_id"],
            "backend": a.engine,
            "frames": n,
            "frame": [a.size, a.size],
            "sampling": {"pixel_size_A": 0.060, "counts_per_px": 0.45, "bin": s["bin"]},
            "batch": a.batch,
            "chunk_frames": od.chunk_size(a.chunk_frames, a.batch),
            "rows": rows,
            "bit_identical_to_single": identical,
        }
        out_dir = results_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "offline_dask.json"
        path.write_text(json.dumps(stamped("bench_offline_dask", payload), indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows, ["run", "workers", "threads_per_worker", "wall_s", "frames_per_s", "vs_single"]))
    print(f"bit-identical to the single process: {identical}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
