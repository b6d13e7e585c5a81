"""Capacity model: frames/s per engine worker, 1 -> 2 worker scaling, and workers needed for 40 Hz.

Per-worker rate: the whole batch stage (upload, bin, tile, engine, fuse, back to detector pixels,
download) on 1024 x 1024 and K2-size (3838 x 3710) detector frames whose pixel is the engine's
working pixel / k for k = 1, 2, 4 (dose per area fixed at the engine's nominal), once with a worker
that owns every core and once with a worker that owns half of them (what each of two workers gets).
Scaling: the service's own worker pool (``service/workers.py``: batcher, tickets, reorderer) fed a
queue of frames, 1 worker with every core against 2 workers with half each. The capacity table turns
the per-worker rates into how many such workers a site needs for 40 Hz at each size and bin.

The results file records the engine's id (``name@hash/backend``): a name alone cannot tell a retrained
engine, or another default, from the one measured.

    python -m benchmarks.bench_capacity [--model NAME] [--min-seconds 3] [--sizes 1024,k2] [--bins 1,2,4]
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time

import numpy as np
import torch

from benchmarks.common import table, write_result
from sbd_stream.config import BackpressurePolicy, DetectorSettings
from sbd_stream.engines.card import load_card, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchStage
from sbd_stream.service.batching import Batcher
from sbd_stream.service.build import light_torch
from sbd_stream.service.workers import WorkerPool, WorkerSpec
from sbd_stream.supervisor import Supervisor

SIZES = {"1024": (1024, 1024), "k2": (3838, 3710)}
RATE_HZ = 40.0


def _shape(size: str) -> tuple[int, int]:
    """``1024``, ``k2`` or ``HxW``."""
    if size in SIZES:
        return SIZES[size]
    h, _, w = size.partition("x")
    return (int(h), int(w or h))


def _stage(model: str | None, kind: str, k: int, threads: int | None) -> BatchStage:
    card = load_card(resolve_engine_dir(model))
    if card.pixel_size_A is None:
        raise SystemExit("the engine card states no working pixel; the capacity model needs one")
    dose = card.normalisation.dose / card.pixel_size_A**2
    den = Denoiser.load(kind, model, None if torch.cuda.is_available() else "cpu", threads=threads)
    stage = BatchStage(den, DetectorSettings(pixel_size_A=card.pixel_size_A / k, dose_e_per_A2=dose))
    light_torch([stage])  # as the service runs it: torch's OpenMP threads off ONNX Runtime's cores
    return stage


def _frames(stage: BatchStage, shape: tuple[int, int], n: int, seed: int) -> list[Frame]:
    rng = np.random.default_rng(seed)
    lam = stage.geometry.detector.vacuum_counts
    return [
        Frame(FrameHeader("bench", i, 0.0, shape, "uint16"), rng.poisson(lam, size=shape).astype(np.uint16))
        for i in range(n)
    ]


def per_worker(model: str | None, kind: str, size: str, k: int, threads: int, min_s: float) -> dict:
    stage = _stage(model, kind, k, threads)
    frames = _frames(stage, _shape(size), 2, k)
    stage.process(frames[:1])  # warm-up: tile plans, ORT graph
    n, t0 = 0, time.perf_counter()
    while True:
        stage.process([frames[n % 2]])
        n += 1
        dt = time.perf_counter() - t0
        if (dt >= min_s and n >= 2) or dt >= 4 * min_s:
            break
    fps = n / dt
    h, w = _shape(size)
    return {
        "size": f"{h}x{w}",
        "bin": k,
        "detector_pixel_A": round(stage.geometry.detector.pixel_size_A, 4),
        "working_px": f"{-(-h // k)}x{-(-w // k)}",
        "threads": threads,
        "engine_id": stage.denoiser.engine_id,
        "frames": n,
        "ms_per_frame": 1000 / fps,
        "frames_per_s": fps,
    }


def pool_rate(model: str | None, kind: str, size: str, k: int, workers: int, n: int, batch: int) -> dict:
    """Frames/s of the service's worker pool on ``n`` queued frames (no sockets: the pool itself)."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    stages = [_stage(model, kind, k, threads) for _ in range(workers)]
    frames = _frames(stages[0], _shape(size), n, 7)
    for st in stages:
        st.process(frames[:batch])  # warm-up each engine
    m = Metrics()
    q = FrameQueue(n + 1)
    batcher = Batcher(q, batch, 1.0, BackpressurePolicy.lossless)
    out: list[int] = []
    finished = threading.Event()

    def emit(res) -> None:
        out.extend(h.seq for h in res.headers)
        if len(out) >= n:
            finished.set()

    specs = [WorkerSpec(i, "cpu", threads) for i in range(workers)]
    pool = WorkerPool(stages, specs, batcher, m, Supervisor(m), emit, lambda _msg: None)
    for f in frames:
        q.put(f, f.data.nbytes)
    t0 = time.perf_counter()
    pool.start()
    finished.wait(3600)
    dt = time.perf_counter() - t0
    pool.stop()
    q.close()
    pool.join(10)
    if out != list(range(n)):
        raise SystemExit(f"worker pool delivered {len(out)} frames out of order or incompletely")
    return {"workers": workers, "threads_each": threads, "frames": n, "seconds": dt, "frames_per_s": n / dt}


def capacity(rows: list[dict]) -> list[dict]:
    """Workers like the measured one needed for 40 Hz, per size and bin (the all-cores worker)."""
    cores = os.cpu_count() or 1
    out = []
    for r in rows:
        if r["threads"] != cores:
            continue
        need = math.ceil(RATE_HZ / r["frames_per_s"])
        out.append(
            {
                "size": r["size"],
                "bin": r["bin"],
                "working_px": r["working_px"],
                "frames_per_s_per_worker": r["frames_per_s"],
                "workers_for_40Hz": need,
                "cores_for_40Hz": need * cores,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped one)")
    ap.add_argument("--engine", default="auto", help="backend: auto, onnxruntime, torch, tensorrt")
    ap.add_argument("--sizes", default="1024,k2", help="frame sizes: 1024, k2 (3838x3710) or HxW")
    ap.add_argument("--bins", default="1,2,4", help="bin factors to measure")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each per-worker rate at least this")
    ap.add_argument("--scaling-frames", type=int, default=64, help="frames through the pool (1 vs 2 workers)")
    ap.add_argument("--scaling-size", default="1024", help="frame size of the scaling run")
    ap.add_argument("--scaling-bin", type=int, default=4, help="bin of the scaling run (4: the live default)")
    ap.add_argument("--batch", type=int, default=4, help="frames per batch in the scaling run")
    ap.add_argument("--note", default="", help="anything that affects the numbers (e.g. a shared machine)")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    shares = sorted({cores, max(1, cores // 2)}, reverse=True)
    rows = []
    for size in a.sizes.split(","):
        for k in (int(b) for b in a.bins.split(",")):
            for threads in shares:
                rows.append(per_worker(a.model, a.engine, size, k, threads, a.min_seconds))
                print(
                    f"  {size} bin {k} threads {threads}: {rows[-1]['frames_per_s']:.2f} frames/s", flush=True
                )
    scaling = [
        pool_rate(a.model, a.engine, a.scaling_size, a.scaling_bin, w, a.scaling_frames, a.batch)
        for w in (1, 2)
    ]
    one, two = scaling
    half = next(
        (r for r in rows if r["size"] == f"{_shape(a.scaling_size)[0]}x{_shape(a.scaling_size)[1]}"
         and r["bin"] == a.scaling_bin and r["threads"] == max(1, cores // 2)),
        None,
    )  # fmt: skip
    summary = {
        "speedup_2_vs_1_worker_same_cores": two["frames_per_s"] / one["frames_per_s"],
        "efficiency_vs_2x_half_worker": (
            two["frames_per_s"] / (2 * half["frames_per_s"]) if half is not None else None
        ),
    }
    cap = capacity(rows)
    path = write_result(
        "bench_capacity",
        {
            "engine": str(resolve_engine_dir(a.model).name),
            "engine_id": rows[0]["engine_id"] if rows else None,  # name@sha256[:12]/backend, as measured
            "rate_hz": RATE_HZ,
            "note": a.note,
            "per_worker": rows,
            "scaling": scaling,
            "scaling_summary": summary,
            "capacity_40Hz": cap,
            "gpu": "not measured: no GPU on this machine (docs/scale-out.md says how to run it on one)"
            if not torch.cuda.is_available()
            else torch.cuda.get_device_name(0),
        },
    )
    print(table(rows, ["size", "bin", "working_px", "threads", "frames", "ms_per_frame", "frames_per_s"]))
    print(table(scaling, ["workers", "threads_each", "frames", "seconds", "frames_per_s"]))
    print(table([summary], list(summary)))
    print(
        table(
            cap,
            ["size", "bin", "working_px", "frames_per_s_per_worker", "workers_for_40Hz", "cores_for_40Hz"],
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
