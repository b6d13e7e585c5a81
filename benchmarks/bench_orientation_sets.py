"""Which orientations to average an engine over offline: paper PSNR per region for each orientation set.

Why: ``engines/symmetry.py`` averages an engine over the orientations it saw in training. A flips-only
engine (``augment.flips``: each axis mirrored on its own, so as is, mirrored either way and the half
turn) was averaged over 2 until session 30; this measures as is, those 2, the 4 flips, the 4 quarter
turns and all 8 on the same noisy frames, so the set ``ensemble`` picks is a measured choice.

Frames: the 6 bundled paper-world test frames of the quality test (``tests/data/paper_test_frames.h5``,
0.060 A, 0.45 counts/px, region maps from the atomic model), ``--seeds`` Poisson draws each, paper PSNR
whole / vacuum / support / particle, through the product's batch stage (bicubic, as offline); the same
draws for every set. An engine whose working pixel is no multiple of 0.060 A (``sbd-unet4-default``) is
scored at its own pixel (the frames resampled there, bin 1) at its training dose. Paired differences
against the 2-orientation set with their standard error over the draws.

    python -m benchmarks.bench_orientation_sets [--model sbd-unet4-detector] [--seeds 8] [--frames 6]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import table, write_result
from sbd_stream.config import DetectorSettings
from sbd_stream.engines.card import resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.engines.symmetry import FLIPS, Orientation, orientations
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage
from sbd_stream.sources.emulator import resample
from training.evaluate.quality_gate import COUNTS, DETECTOR_PX
from training.evaluate.regions import region_map, region_psnrs
from training.sim.samples import QUALITY_OUT, read_quality_frames

SETS: dict[str, list[Orientation]] = {
    "as is": orientations(1),
    "2 (as is, mirrored)": orientations(2),
    "4 flips": list(FLIPS),
    "4 quarter turns": orientations(4),
    "all 8": orientations(8),
}
BASE = "2 (as is, mirrored)"
REGIONS = ("whole", "vacuum", "support", "particle")


def frames_at(px_out: float, counts: float, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The bundled frames (clean counts, region map) at ``px_out``: identical to the quality test's at
    0.060 A and 0.45 counts/px; elsewhere resampled, with the column positions scaled alike."""
    images, cols, px = read_quality_frames(QUALITY_OUT)
    out = []
    for img, c in list(zip(images, cols, strict=True))[:n]:
        clean = resample(img, px, px_out) * counts
        xy = (np.asarray(c["xy"], np.float64) + 0.5) * (px / px_out) - 0.5
        out.append((clean, region_map(clean.shape, xy, c["species"], px_out)))
    return out


def sampling(den: Denoiser) -> tuple[float, float]:
    """The detector's 0.060 A and 0.45 counts/px where the engine's working pixel is a whole multiple of
    it; else the engine's own pixel and training dose (the product refuses a non-integer bin)."""
    card = den.engine.card
    px = card.pixel_size_A or DETECTOR_PX
    k = px / DETECTOR_PX
    if abs(k - round(k)) < 1e-3:
        return DETECTOR_PX, COUNTS
    return px, float(card.normalisation.dose)  # counts per working pixel in vacuum, at bin 1


def measure(model: str, seeds: int, n_frames: int) -> dict:
    den = Denoiser.load(engine="auto", engine_dir=resolve_engine_dir(model), device="cpu")
    px, counts = sampling(den)
    stage = BatchStage(den, DetectorSettings(pixel_size_A=px, counts_per_px=counts), upsample="bicubic")
    rows = []
    for s in range(seeds):
        for i, (clean, regions) in enumerate(frames_at(px, counts, n_frames)):
            noisy = np.random.default_rng([7 + s, i]).poisson(clean).astype(np.float32)
            row: dict = {"seed": s, "frame": i}
            for name, oset in SETS.items():
                stage.orientation_set, stage.orientations = oset, len(oset)
                h = FrameHeader("bench", 0, 0.0, noisy.shape, "float32")
                den_counts = stage.process([Frame(h, noisy)]).denoised[0].astype(np.float64)
                row[name] = region_psnrs(clean, den_counts, regions)
            rows.append(row)
            print(f"seed {s} frame {i}: " + ", ".join(f"{k} {row[k]['whole']:.2f}" for k in SETS), flush=True)
    return {"model": den.engine.card.name, "geometry": stage.geometry.describe(), "pixel_size_A": px,
            "counts_per_px": counts, "seeds": seeds, "frames": n_frames, "rows": rows,
            "summary": summarise(rows)}  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Mean paper PSNR per set and region, and the paired difference from ``BASE`` (mean, s.e., wins)."""
    out = []
    for name in SETS:
        rec: dict = {"set": name}
        for r in REGIONS:
            v = np.array([row[name][r] for row in rows], np.float64)
            d = v - np.array([row[BASE][r] for row in rows], np.float64)
            ok = np.isfinite(d)
            rec[r] = float(np.nanmean(v)) if np.isfinite(v).any() else None
            if name != BASE and ok.sum() > 1:
                rec[f"{r} vs 2"] = float(d[ok].mean())
                rec[f"{r} vs 2 se"] = float(d[ok].std(ddof=1) / np.sqrt(ok.sum()))
                rec[f"{r} wins"] = f"{int((d[ok] > 0).sum())}/{int(ok.sum())}"
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sbd-unet4-detector")
    ap.add_argument("--seeds", type=int, default=8, help="Poisson draws per frame")
    ap.add_argument("--frames", type=int, default=6, help="how many of the 6 bundled frames")
    a = ap.parse_args(argv)
    if a.seeds < 1 or not 1 <= a.frames <= 6:
        ap.error("--seeds must be >= 1 and --frames 1..6")
    res = measure(a.model, a.seeds, a.frames)
    cols = ["set", *REGIONS, "whole vs 2", "support vs 2", "particle vs 2", "whole wins"]
    print(table(res["summary"], cols))
    path = write_result(f"orientation_sets_{res['model']}", res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
