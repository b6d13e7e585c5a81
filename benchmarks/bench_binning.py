"""Binning detector frames to the engine's working pixel: speed per bin factor and what binning costs in PSNR.

Speed: the whole batch stage (upload, bin, tile, engine, fuse, interpolate back, download) on
1024 x 1024 detector frames for bin 1 / 2 / 4 with the same engine weights, configured as the service
runs it (``light_torch``: torch at one thread beside ONNX Runtime, as ``bench_capacity`` does; without
it torch's OpenMP threads fought ONNX Runtime's and a loaded machine doubled the time, audit 26), and
the engine's id (``name@hash``) recorded; the detector pixel is set
to working pixel / k and the dose to the engine's nominal dose per area, so only the pixel count the
network sees changes. Quality: clean simulated frames at the detector's sampling, binned and brought
back without any network (bicubic), against the clean frame on the paper's metric: the ceiling that
binning alone puts on any denoiser.

    python -m benchmarks.bench_binning [--model NAME] [--frames 4] [--size 1024] [--clean FILE.h5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import table, write_result
from sbd_stream.compute.binning import bin_counts, unbin
from sbd_stream.compute.quality import paper_psnr
from sbd_stream.config import DetectorSettings
from sbd_stream.engines.card import load_card, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage
from sbd_stream.service.build import light_torch


def speed(model: str | None, kind: str, size: int, n: int, repeats: int, bins: list[int]) -> list[dict]:
    card = load_card(resolve_engine_dir(model))
    if card.pixel_size_A is None:
        raise SystemExit("the engine card states no working pixel; binning needs one")
    dose = card.normalisation.dose / card.pixel_size_A**2
    rows = []
    for k in bins:
        den = Denoiser.load(kind, model, "cpu" if not torch.cuda.is_available() else None)
        det = DetectorSettings(pixel_size_A=card.pixel_size_A / k, dose_e_per_A2=dose)
        stage = BatchStage(den, det)
        light_torch([stage])  # as the service runs it (service/build.py)
        rng = np.random.default_rng(k)
        data = rng.poisson(det.vacuum_counts, size=(n, size, size)).astype(np.uint16)
        frames = [Frame(FrameHeader("bench", i, 0.0, (size, size), "uint16"), data[i]) for i in range(n)]
        stage.process(frames)  # warm-up: plans, ORT graph
        t0 = time.perf_counter()
        for _ in range(repeats):
            stage.process(frames)
        dt = (time.perf_counter() - t0) / (repeats * n)
        rows.append(
            {
                "bin": k,
                "engine_id": den.engine_id,
                "detector_pixel_A": round(det.pixel_size_A, 4),
                "working_px": f"{-(-size // k)}^2",
                "ms_per_frame": 1000 * dt,
                "frames_per_s": 1 / dt,
                "vs_40Hz": (1 / dt) / 40.0,
            }
        )
    return rows


def specimen_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` window centred on the specimen (the centroid of its contrast against vacuum
    = 1), kept inside the frame. A corner, and in the detector world (support along the bottom edge) even
    the frame's centre, is vacuum: binning vacuum scores ~140 dB and says nothing about atoms."""
    h, w = img.shape
    weight = np.abs(img - 1.0)
    total = float(weight.sum())
    cy, cx = h / 2, w / 2
    if total > 0:
        ys, xs = np.indices(img.shape)
        cy, cx = float((ys * weight).sum()) / total, float((xs * weight).sum()) / total
    top = int(np.clip(round(cy - size / 2), 0, max(0, h - size)))
    left = int(np.clip(round(cx - size / 2), 0, max(0, w - size)))
    return img[top : top + size, left : left + size]


def clean_frames(path: Path | None, size: int) -> tuple[np.ndarray, str]:
    """Clean frames (vacuum = 1) at 0.060 A: a detector-sampling test split if given, else the bundled
    samples resampled to 0.060 A (cubic splines; they are band-limited). A given path must exist: a
    silent fallback would label the bundled frames' numbers with the file's name."""
    import h5py

    from sbd_stream.sources.emulator import resample

    if path is not None:
        with h5py.File(path, "r") as f:
            key = "images" if "images" in f else next(iter(f))
            imgs = np.asarray(f[key][:8], np.float32)
            px = float(f.attrs.get("pixel_size_A", 0.060))
        return np.stack([specimen_crop(resample(i, px, 0.060), size) for i in imgs]), str(path)
    sample = Path(__file__).resolve().parents[1] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"
    with h5py.File(sample, "r") as f:
        imgs = np.asarray(f["images"][:8], np.float32)
        px = float(f.attrs["pixel_size_A"])
    return np.stack([specimen_crop(resample(i, px, 0.060), size) for i in imgs]), f"{sample.name} resampled"


def quality(clean: np.ndarray, bins: list[int], counts_per_px: float = 0.45) -> list[dict]:
    rows = []
    lam = torch.from_numpy(clean * counts_per_px)
    m = 16  # frame borders are reflected before binning; judge the interior
    for k in bins:
        back = unbin(bin_counts(lam, k), k, clean.shape[1:]).numpy()
        scores = [paper_psnr(b[m:-m, m:-m], c[m:-m, m:-m]) for b, c in zip(back, lam.numpy(), strict=True)]
        rows.append({"bin": k, "paper_psnr_db": float(np.mean(scores)), "min_db": float(np.min(scores))})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="engine name or path (default: the shipped engine)")
    ap.add_argument("--engine", default="onnxruntime", help="backend")
    ap.add_argument("--frames", type=int, default=4, help="frames per batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--bins", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument(
        "--clean",
        type=Path,
        default=None,
        help="clean frames at 0.060 A (HDF5 /images, e.g. data/detector-test60pm.h5 from "
        "`sbd-train simulate --preset detector`); default: the bundled samples resampled to 0.060 A",
    )
    a = ap.parse_args(argv)
    if a.clean is not None and not a.clean.is_file():  # before minutes of speed runs, not after
        print(f"bench_binning: --clean {a.clean}: no such file", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sp = speed(a.model, a.engine, a.size, a.frames, a.repeats, a.bins)
    clean, src = clean_frames(a.clean, a.size)
    q = quality(clean, [b for b in a.bins if b > 1] + [6])
    path = write_result(
        "bench_binning",
        {
            "engine": str(resolve_engine_dir(a.model)),
            "engine_id": sp[0]["engine_id"] if sp else None,
            "backend": a.engine,
            "frame": [a.size, a.size],
            "batch": a.frames,
            "speed": sp,
            "quality_source": src,
            "quality": q,
        },
    )
    print(table(sp, ["bin", "detector_pixel_A", "working_px", "ms_per_frame", "frames_per_s", "vs_40Hz"]))
    print()
    print(f"binning alone, clean frames at 0.060 A ({src}), 0.45 counts/px, paper PSNR:")
    print(table(q, ["bin", "paper_psnr_db", "min_db"]))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
