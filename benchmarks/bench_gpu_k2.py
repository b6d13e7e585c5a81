"""Full K2 frames at bin 4 on a GPU: frames/s of the whole batch stage, the product's path and faster ones.

Frames of 3838 x 3710 detector pixels at the engine's working pixel / bin (bin 4: 960 x 928 working
pixels), dose at the engine's nominal, with real content (bundled held-out test images at the detector
pixel, Poisson counts). Each variant (``benchmarks/gpu_k2_paths.py``) is timed for ``--seconds`` at
each batch size: upload, bin, denoise, return to detector pixels, download, all in the timed loop.
Per row: frames/s, ms per batch, peak GPU memory, speed-up over the product path (``baseline``) at
the same batch, one batch cut into synchronised phases (staging / upload / compute / download, so a
limit names its cause), and for every variant the error of one frame against the fp32 product output
(max abs error in counts, paper PSNR against the clean frame and its difference).

    python -m benchmarks.bench_gpu_k2 [--model NAME] [--batch 1,4,8,16] [--seconds 5] [--out PATH]
    python -m benchmarks.bench_gpu_k2 --device cpu --shape 512x512 --seconds 1   # the plumbing on a CPU

Without CUDA (and no ``--device cpu``) it exits 0 with "no CUDA device: skipped" and a JSON saying so.
A run on another device never overwrites a CUDA record at the same path (it writes ``*_<device>.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, results_dir, table, write_result
from benchmarks.gpu_k2_paths import (
    VARIANTS,
    PinnedBatchStage,
    StagedPath,
    Variant,
    as_frames,
    clean_frame,
    make_frames,
    product_phases,
    quality,
    time_loop,
)
from sbd_stream.compute.binning import binned_shape
from sbd_stream.compute.quality import paper_psnr
from sbd_stream.config import DetectorSettings
from sbd_stream.engines.card import load_card, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.batch import BatchStage

K2 = (3838, 3710)
TARGET_FPS = 80.0  # issue 24's acceptance: K2 bin 4 on one H200
RECORD = RESULTS / "bench_capacity_h200_sbd-unet4-detector.json"  # the committed record, read only
DISTINCT = 4  # distinct frames cycled through the batches


def record_fps(shape: tuple[int, int], k: int) -> float | None:
    """Today's frames/s of the product path on the H200 (bench_capacity record), for this size and bin."""
    try:
        rows = json.loads(RECORD.read_text())["per_worker"]
    except (OSError, ValueError, KeyError):
        return None
    hit = [r["frames_per_s"] for r in rows if r["size"] == f"{shape[0]}x{shape[1]}" and r["bin"] == k]
    return max(hit) if hit else None


def _shape(s: str) -> tuple[int, int]:
    if s == "k2":
        return K2
    h, _, w = s.partition("x")
    return int(h), int(w or h)


def _stage(a: argparse.Namespace, device: torch.device, whole: bool, pinned: bool = False) -> BatchStage:
    card = load_card(resolve_engine_dir(a.model))
    if card.pixel_size_A is None:
        raise SystemExit("the engine card states no working pixel; this benchmark needs one")
    det = DetectorSettings(
        pixel_size_A=card.pixel_size_A / a.bin, dose_e_per_A2=card.normalisation.dose / card.pixel_size_A**2
    )
    tile = None
    if whole:
        mult = 2**card.scales * card.space_to_depth if card.architecture == "unet" else 2
        h, w = a.shape
        side = max(binned_shape(h, w, a.bin))
        tile = side + -side % mult
    den = Denoiser.load(a.engine, a.model, str(device), tile=tile)
    return (PinnedBatchStage if pinned else BatchStage)(den, det)


def _out_path(a: argparse.Namespace, device: torch.device) -> Path:
    """``--out``, or the results folder's; never over a CUDA record from a run on another device."""
    path = Path(a.out) if a.out else results_dir() / "bench_gpu_k2.json"
    if device.type != "cuda" and path.is_file():
        try:
            if json.loads(path.read_text()).get("device_type") == "cuda":
                return path.with_name(f"{path.stem}_{device.type}.json")
        except ValueError:
            pass
    return path


class Bench:
    def __init__(self, a: argparse.Namespace, device: torch.device) -> None:
        self.a, self.dev = a, device
        self.t0 = time.perf_counter()
        self.stages: dict[tuple[bool, bool], BatchStage] = {}
        st = self.stage(False)
        g = st.geometry
        self.geometry = g.describe()
        lam = g.detector.vacuum_counts
        clean = [clean_frame(a.shape, g.detector.pixel_size_A, i) for i in range(DISTINCT)]
        self.expected = clean[0] * lam
        self.frames = {u: make_frames(clean, lam, u, device) for u in ("uint16", "uint8")}
        self.max_count = int(max(f.max() for f in self.frames["uint16"]))
        self.ref = st.process(as_frames(self.frames["uint16"][:1])).denoised[0].copy()  # fp32 product
        self.ref_db = paper_psnr(self.ref, self.expected)
        self.rows: list[dict] = []
        self.base_fps: dict[int, float] = {}

    def stage(self, whole: bool, pinned: bool = False) -> BatchStage:
        if (whole, pinned) not in self.stages:
            self.stages[whole, pinned] = _stage(self.a, self.dev, whole, pinned)
        return self.stages[whole, pinned]

    def batch(self, u: str, b: int) -> list[np.ndarray]:
        fr = self.frames[u]
        return [fr[i % len(fr)] for i in range(b)]

    def run(self, v: Variant, b: int) -> dict:
        row: dict = {"variant": v.name, "batch": b, "upload": v.upload, "precision": v.precision,
                     "graph": v.graph, "whole_tile": v.whole, "slots": v.slots, "working_output": v.working,
                     "pinned": self.dev.type == "cuda" and (v.pinned_product or not v.product)}  # fmt: skip
        why = v.unavailable(self.dev)
        if why is None and time.perf_counter() - self.t0 > self.a.budget_s:
            why = f"out of the time budget ({self.a.budget_s:.0f} s)"
        if why:
            return {**row, "skipped": why}
        torch.backends.cudnn.benchmark = v.cudnn_benchmark
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        try:
            row.update(self._measure(v, b))
        except (RuntimeError, ValueError) as e:  # a variant this torch / device cannot run: say so, go on
            row["skipped"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            torch.backends.cudnn.benchmark = False
        if self.dev.type == "cuda":
            row["gpu_peak_mib"] = torch.cuda.max_memory_allocated(self.dev) / 2**20
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        return row

    def _measure(self, v: Variant, b: int) -> dict:
        frames = self.batch(v.upload, b)
        qframe = self.frames[v.upload][0]
        if v.product:
            st = self.stage(False, v.pinned_product)
            fr = as_frames(frames)
            st.process(fr)  # warm-up
            n, dt = time_loop(lambda: st.process(fr), lambda _r: None, b, self.a.seconds)
            phases = product_phases(st, frames)
            out = st.process(as_frames([qframe])).denoised[0]
        else:
            path = StagedPath(self.stage(v.whole), v, b, self.a.shape)
            path.collect(path.submit(frames))  # warm-up (cuDNN's choice with cudnn_benchmark)
            n, dt = time_loop(lambda: path.submit(frames), path.collect, b, self.a.seconds, v.slots)
            phases = path.phases(frames)
            out = path.collect(path.submit([qframe] * b))[0].copy()
            pinned = path.pinned
            del path
        fps = n / dt
        if v.name == "baseline":
            self.base_fps[b] = fps
        res: dict[str, Any] = {
            "frames": n,
            "seconds": dt,
            "frames_per_s": fps,
            "ms_per_batch": 1e3 * dt * b / n,
        }
        if not v.product:
            res["pinned"] = pinned  # False where page-locking failed (the buffers then are pageable)
        base = self.base_fps.get(b)
        res["speedup"] = fps / base if base else None
        res.update({k: round(x, 3) for k, x in phases.items()})
        if v.working:  # no detector-pixel frame to compare with the product's
            res["quality"] = "working-pixel output: not compared"
        else:
            res.update(quality(out, self.ref, self.expected, self.ref_db))
        return res


def _verdict(rows: list[dict], record: float | None) -> dict:
    """The fastest row that returns detector pixels (what issue 24 asks of the whole stage)."""
    done = [r for r in rows if "frames_per_s" in r and not r["working_output"]]
    working = [r["frames_per_s"] for r in rows if "frames_per_s" in r and r["working_output"]]
    if not done:
        return {"best": None}
    best = max(done, key=lambda r: r["frames_per_s"])
    per_frame = {k: best[k] / best["batch"] for k in ("stage_ms", "upload_ms", "compute_ms", "download_ms")
                 if k in best}  # fmt: skip
    limit = max(per_frame, key=per_frame.__getitem__) if per_frame else None
    return {
        "best": {k: best.get(k) for k in ("variant", "batch", "frames_per_s", "speedup")},
        "meets_target": best["frames_per_s"] >= TARGET_FPS,
        "vs_record": best["frames_per_s"] / record if record else None,
        "best_ms_per_frame_by_phase": per_frame,
        "largest_phase": limit,
        "best_working_pixel_output_frames_per_s": max(working, default=None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped one)")
    ap.add_argument("--engine", default="torch", help="backend (torch: autocast and graphs need it)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (the plumbing, for tests)")
    ap.add_argument("--shape", default="k2", help="detector frame: k2 (3838x3710) or HxW")
    ap.add_argument("--bin", type=int, default=4, help="detector pixel = the engine's working pixel / bin")
    ap.add_argument("--batch", default="1,4,8,16", help="frames per batch, comma-separated")
    ap.add_argument("--seconds", type=float, default=5.0, help="time each variant and batch this long")
    ap.add_argument("--variants", default="all", help="comma-separated names, or all: " +
                    ", ".join(v.name for v in VARIANTS))  # fmt: skip
    ap.add_argument("--budget-s", type=float, default=600.0, help="skip what would start after this")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_gpu_k2.json)")
    ap.add_argument("--note", default="", help="anything that affects the numbers")
    a = ap.parse_args()
    a.shape = _shape(a.shape)
    record = record_fps(a.shape, a.bin)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device: skipped (torch.cuda.is_available() is False)"
        skip = {"status": "skipped", "reason": reason, "device_type": "cpu", "record_frames_per_s": record}
        path = write_result("bench_gpu_k2", skip, _out_path(a, torch.device("cpu")))
        print(f"{reason}\nwrote {path}")
        return
    names = [v.name for v in VARIANTS] if a.variants == "all" else a.variants.split(",")
    known = {v.name: v for v in VARIANTS}
    if unknown := [n for n in names if n not in known]:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(known)}")
    chosen = [known[n] for n in names]
    batches = [int(b) for b in a.batch.split(",")]
    bench = Bench(a, dev)
    out = _out_path(a, dev)
    payload = {
        "status": "measured",
        "device_type": dev.type,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "engine": resolve_engine_dir(a.model).name,
        "backend": a.engine,
        "shape": list(a.shape),
        "geometry": bench.geometry,
        "max_count": bench.max_count,
        "record_frames_per_s": record,
        "target_frames_per_s": TARGET_FPS,
        "note": a.note,
        "rows": bench.rows,
    }
    if not any(v.name == "baseline" for v in chosen):
        chosen.insert(0, VARIANTS[0])  # every speed-up is against the product path in this run
    for v in chosen:
        for b in batches:
            bench.rows.append(bench.run(v, b))
            r = bench.rows[-1]
            print(
                f"  {v.name} x{b}: " + (r.get("skipped") or f"{r['frames_per_s']:.1f} frames/s"), flush=True
            )
            payload["summary"] = _verdict(bench.rows, record)
            path = write_result("bench_gpu_k2", payload, out)  # after every row: a timeout keeps the rest
    cols = ["variant", "batch", "frames_per_s", "ms_per_batch", "speedup", "gpu_peak_mib", "stage_ms"]
    cols += ["upload_ms", "compute_ms", "download_ms", "max_abs_err_counts", "paper_psnr_delta_db", "skipped"]
    print(table(bench.rows, cols))
    print(table([payload["summary"].get("best") or {}], ["variant", "batch", "frames_per_s", "speedup"]))
    s = payload["summary"]
    vs = f"{s['vs_record']:.2f}x today's {record:.1f} frames/s" if s.get("vs_record") else "no record here"
    print(f"target {TARGET_FPS:.0f} frames/s met: {s.get('meets_target')}; best {vs}; "
          f"largest phase of the best: {s.get('largest_phase')}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
