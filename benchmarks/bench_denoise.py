"""Offline denoising throughput at 1024 x 1024, per engine, against the paper's tiling in one run.

For each backend present: frames/s and ms/frame of the product's tiled path (tiles cut and fused on the
device, one batch through the engine). Baseline: the paper's public code's approach on the same weights
and machine: eager PyTorch, 400 x 400 patches at stride 350, averaged. Seam quality of both is measured
against whole-frame inference (``sbd_stream.quality.seam_error``), excluding a border as wide as the
network's reach so only the tiling, not the frame edge, is judged.

    python -m benchmarks.bench_denoise [--model NAME] [--frames 4] [--size 1024]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import torch

from benchmarks.common import table, write_result
from benchmarks.paper_tiling import paper_patch_average, paper_seam_lines, patch_starts
from sbd_stream.compute.model import support_extent
from sbd_stream.compute.quality import seam_error
from sbd_stream.compute.tiling import whole_frame_reference
from sbd_stream.engines import available_kinds
from sbd_stream.engines.card import load_card, load_torch_model, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser

T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    out = fn()  # warm-up: allocations, plan caches, ORT graph optimisation
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, out


def crop_lines(lines: list[int], lo: int, hi: int) -> list[int]:
    return [x - lo for x in lines if lo <= x < hi]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped engine)")
    ap.add_argument("--frames", type=int, default=4, help="frames per timed call")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tiles", type=int, nargs="*", default=[512], help="extra tile sizes to time")
    args = ap.parse_args()

    engine_dir = resolve_engine_dir(args.model)
    card = load_card(engine_dir)
    n, s = args.frames, args.size
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.poisson(card.normalisation.dose, size=(n, s, s)).astype(np.float32))
    model = load_torch_model(engine_dir, card)
    norm = card.normalisation
    reach = max(support_extent(model))
    lo, hi = reach, s - reach  # judge the tiling, not the frame edge
    rows: list[dict] = []

    def seam_row(out: torch.Tensor, plan) -> float:
        with torch.inference_mode():
            whole = norm.to_counts(whole_frame_reference(norm.to_input(frames[:1]), plan, model))[0].numpy()
        rows_ = crop_lines(plan.seam_positions(0), lo, hi)
        cols_ = crop_lines(plan.seam_positions(1), lo, hi)
        return seam_error(out[0].numpy()[lo:hi, lo:hi], whole[lo:hi, lo:hi], rows_, cols_)

    tiles = [None, *args.tiles]
    for kind, reason in available_kinds(engine_dir).items():
        if reason:
            rows.append({"method": f"sbd-stream tiled / {kind}", "note": f"skipped: {reason}"})
            continue
        for tile in tiles if kind != "torch" else [None]:
            den = Denoiser.load(kind, engine_dir, tile=tile)
            dt, out = timed(partial(den.denoise, frames), args.repeats)
            plan = den.plan(s, s)
            rows.append(
                {
                    "method": f"sbd-stream tiled / {kind}" + ("" if tile is None else f" / tile {tile}"),
                    "device": str(den.device),
                    "tile": plan.tile,
                    "margin": plan.margin,
                    "overlap": plan.overlap,
                    "tiles_per_frame": plan.tiles_per_frame,
                    "ms_per_frame": 1000 * dt / n,
                    "frames_per_s": n / dt,
                    "seam_error": seam_row(out.cpu(), plan),
                    "seam_lines": len(plan.seam_positions(0)) + len(plan.seam_positions(1)),
                }
            )

    # the paper's approach: eager PyTorch, same weights
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model_dev = load_torch_model(engine_dir, card).to(dev)
    x = norm.to_input(frames).unsqueeze(1).to(dev)
    dt, paper = timed(lambda: paper_patch_average(x, model_dev), args.repeats)
    paper_counts = norm.to_counts(paper[:, 0]).cpu()
    with torch.inference_mode():
        whole_paper = norm.to_counts(model(x[:1].cpu())[:, 0])[0].numpy()
    paper_lines = crop_lines(paper_seam_lines(s), lo, hi)
    paper_img = paper_counts[0].numpy()[lo:hi, lo:hi]
    paper_row = {
        "method": "paper: eager torch, 400px patches stride 350, averaged",
        "device": dev,
        "tile": 400,
        "margin": 0,
        "overlap": 50,
        "tiles_per_frame": len(patch_starts(s, 400, 350)) ** 2,
        "ms_per_frame": 1000 * dt / n,
        "frames_per_s": n / dt,
        "seam_error": seam_error(paper_img, whole_paper[lo:hi, lo:hi], paper_lines, paper_lines),
        "seam_lines": 2 * len(paper_lines),
    }
    rows.append(paper_row)
    for r in rows:
        if "frames_per_s" in r:
            r["speedup_vs_paper"] = r["frames_per_s"] / paper_row["frames_per_s"]

    cols = [
        "method",
        "device",
        "tile",
        "ms_per_frame",
        "frames_per_s",
        "speedup_vs_paper",
        "seam_error",
        "note",
    ]
    print(f"engine {card.name}, {n} frames of {s}x{s}, field of view {card.field_of_view} px")
    print(table(rows, cols))
    path = write_result(
        "bench_denoise",
        {
            "engine": card.name,
            "field_of_view": card.field_of_view,
            "frame_shape": [s, s],
            "frames_per_call": n,
            "input": f"Poisson counts at the engine's dose ({card.normalisation.dose}/px), vacuum-like",
            "seam_metric": "RMS(tiled - whole-frame) in 4-px bands at hand-over lines / std(whole-frame)",
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
