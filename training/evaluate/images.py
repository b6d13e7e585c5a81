"""Evaluation on anyone's clean simulations: the product's own denoise path, scored per region.

Why: the project's own test split says how the engine does on the world it was trained in. A user with
Dr. Probe, abTEM or prismatic images asks how it does on theirs. This reads their clean images (TIFF,
MRC, NPY, HDF5), brings them to the detector's sampling (``resize`` as the paper's test code does,
0.785 for its released images), scales them so vacuum holds ``counts_per_px``, draws Poisson frames,
denoises them exactly as ``sbd-stream denoise`` does (``BatchStage``: bin, engine, back to detector
pixels) and scores whole frame, vacuum, support and particle (``regions_from_clean``: these images
carry no atomic model) against a Gaussian low-pass whose width is chosen per image and per region on
the ground truth (an oracle: no real denoiser can beat that choice of a blur).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from training.evaluate.regions import REGION_NAMES, region_fractions, region_psnrs, regions_from_clean

SUFFIXES = (".tif", ".tiff", ".mrc", ".npy", ".h5", ".hdf5", ".nxs")


class ImageEvalConfig(BaseModel):
    folder: Path
    pixel_size_A: float = Field(gt=0, description="A per pixel of the images as stored")
    resize: float = Field(1.0, gt=0, description="resampling factor before noise (paper's test code: 0.785)")
    counts_per_px: float = Field(0.45, gt=0, description="vacuum counts per detector pixel per frame")
    draws: int = Field(2, ge=1, description="Poisson frames per clean image")
    seed: int = 2026
    engine: str | None = Field(
        None,
        description="engine name or directory; None: what offline work picks (engines.card.offline_engine)",
    )
    backend: str = "auto"
    orientations: int = Field(8, description="as `sbd-stream denoise`: the engine over 8 orientations")
    lowpass_sigmas_A: list[float] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.2]
    out_dir: Path = Path("benchmarks/results/images")

    @property
    def detector_pixel_A(self) -> float:
        return self.pixel_size_A / self.resize


def read_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Every 2-D image in the folder (a 3-D array gives one image per slice), sorted by file name."""
    out: list[tuple[str, np.ndarray]] = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in SUFFIXES):
        for i, img in enumerate(_read(path)):
            name = path.stem if i == 0 else f"{path.stem}[{i}]"
            out.append((name, np.asarray(img, dtype=np.float64)))
    if not out:
        raise ValueError(f"no images ({', '.join(SUFFIXES)}) in {folder}")
    return out


def _read(path: Path) -> list[np.ndarray]:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(path)
    elif suffix == ".mrc":
        import mrcfile

        with mrcfile.open(path, permissive=True) as m:
            arr = np.array(m.data)
    elif suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        import h5py
        import hdf5plugin  # noqa: F401 - bitshuffle / LZ4 filters: recordings and detector files use them

        found: list[np.ndarray] = []
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda _n, obj: (
                    found.append(obj[()])
                    if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) and min(obj.shape[-2:]) >= 32
                    else None
                )
            )
        return [img for a in found for img in (a if a.ndim == 3 else [a])]
    arr = np.squeeze(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D image or a stack, got shape {arr.shape}")
    return list(arr) if arr.ndim == 3 else [arr]


def prepare(img: np.ndarray, cfg: ImageEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Resampled to the detector pixel and scaled to counts (vacuum = counts_per_px); and its regions."""
    from sbd_stream.sources.emulator import resample

    if cfg.resize != 1.0:
        img = resample(img, cfg.pixel_size_A, cfg.detector_pixel_A)
    regions = regions_from_clean(img, cfg.detector_pixel_A)
    vac = regions == 0
    if vac.mean() < 0.01:
        raise ValueError("no vacuum found to set the dose on (the rule needs flat rows of vacuum)")
    counts = img / float(np.median(img[vac])) * cfg.counts_per_px
    return counts, regions


def oracle_low_pass(
    clean: np.ndarray, counts: np.ndarray, regions: np.ndarray, sigmas_px: list[float]
) -> dict[str, dict[str, float]]:
    """Gaussian low-pass with the best width on the ground truth: for the whole frame, and per region."""
    from scipy.ndimage import gaussian_filter

    scored = [
        (s, region_psnrs(clean, gaussian_filter(counts, s, mode="reflect"), regions)) for s in sigmas_px
    ]
    best: dict[str, dict[str, float]] = {}
    for key in ("whole", *REGION_NAMES.values()):
        vals = [(p[key], s) for s, p in scored if np.isfinite(p[key]) or p[key] == np.inf]
        if vals:
            v, s = max(vals)
            best[key] = {"paper_psnr": float(v), "sigma_px": float(s)}
    return best


def binning_ceiling(clean: np.ndarray, regions: np.ndarray, k: int) -> dict[str, float]:
    """Paper PSNR per region of the clean frame summed over k x k pixels and brought back as the service
    does (bicubic): the most any engine at that working pixel could score. Far above an engine's score,
    it says the working pixel is not what limits it."""
    import torch

    from sbd_stream.compute.binning import bin_counts, unbin

    t = torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))[None]
    return region_psnrs(clean, unbin(bin_counts(t, k), k, clean.shape, "bicubic")[0].numpy(), regions)


def evaluate_images(cfg: ImageEvalConfig, log: Any = print) -> dict[str, Any]:
    from sbd_stream.engines.card import default_engine_root, offline_engine
    from training.evaluate.detector import sbd_detector_method

    engine_dir = Path(cfg.engine) if cfg.engine and Path(cfg.engine).is_dir() else None
    engine_dir = engine_dir or default_engine_root() / (cfg.engine or offline_engine())
    px = cfg.detector_pixel_A
    method, info = sbd_detector_method(
        engine_dir, cfg.backend, px, cfg.counts_per_px, orientations=cfg.orientations
    )
    sigmas_px = [s / px for s in cfg.lowpass_sigmas_A]
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, np.ndarray]] = []
    for i, (name, raw) in enumerate(read_images(cfg.folder)):
        clean, regions = prepare(raw, cfg)
        for d in range(cfg.draws):
            noisy = (
                np.random.default_rng([cfg.seed, i, d]).poisson(np.clip(clean, 0, None)).astype(np.float32)
            )
            t0 = time.perf_counter()
            den = method(noisy, cfg.counts_per_px) * cfg.counts_per_px
            dt = time.perf_counter() - t0
            sbd = region_psnrs(clean, den, regions)
            lp = oracle_low_pass(clean, noisy, regions, sigmas_px)
            if d == 0:  # what the engine's working pixel can carry at all: the clean frame binned and back
                ceiling = binning_ceiling(clean, regions, int(info["geometry"]["bin"]))
            rows.append(
                {
                    "image": name,
                    "draw": d,
                    "shape": list(clean.shape),
                    "fractions": region_fractions(regions),
                    "sbd": sbd,
                    "low_pass_oracle": lp,
                    "margin_dB": {k: sbd[k] - lp[k]["paper_psnr"] for k in lp if np.isfinite(sbd[k])},
                    "binning_ceiling": ceiling,
                    "seconds": dt,
                }
            )
            log(_line(rows[-1]))
            if d == 0:
                examples.append({"clean": clean, "noisy": noisy, "denoised": den, "regions": regions})
    summary = _summary(rows)
    return {
        "what": "paper PSNR (counts clamped to [0, 1], range 1 count) per region; low-pass width chosen "
        "per image and per region on the ground truth (oracle)",
        "folder": str(cfg.folder),
        "config": cfg.model_dump(mode="json"),
        "detector_pixel_A": px,
        "engine": str(engine_dir),
        "backend": info["engine"],
        "orientations": info["orientations"],
        "orientations_requested": cfg.orientations,
        "geometry": info["geometry"],
        "rows": rows,
        "summary": summary,
        "_examples": examples,
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("whole", *REGION_NAMES.values())
    out: dict[str, Any] = {}
    for k in keys:
        s = [r["sbd"][k] for r in rows if np.isfinite(r["sbd"][k])]
        lp = [r["low_pass_oracle"][k]["paper_psnr"] for r in rows if k in r["low_pass_oracle"]]
        mg = [r["margin_dB"][k] for r in rows if k in r["margin_dB"]]
        out[k] = {
            "sbd_mean": float(np.mean(s)) if s else None,
            "low_pass_mean": float(np.mean(lp)) if lp else None,
            "margin_min_dB": float(np.min(mg)) if mg else None,
            "margin_mean_dB": float(np.mean(mg)) if mg else None,
        }
    return out


def _line(r: dict[str, Any]) -> str:
    parts = [f"{r['image'][:40]:<40} draw {r['draw']}"]
    for k in ("whole", *REGION_NAMES.values()):
        lp = r["low_pass_oracle"].get(k, {}).get("paper_psnr", float("nan"))
        parts.append(f"{k} {r['sbd'][k]:6.2f} / {lp:6.2f}")
    return " | ".join(parts)


def markdown(res: dict[str, Any], command: str) -> str:
    lines = [
        f"# Clean images from `{res['folder']}`: SBD vs an oracle low-pass, per region",
        "",
        f"Detector pixel {res['detector_pixel_A']:.4f} A, {res['config']['counts_per_px']} counts/px "
        "in vacuum, "
        f"{res['config']['draws']} Poisson draws per image; engine `{res['engine']}` ({res['backend']}, "
        f"averaged over {res.get('orientations', 1)} orientations, "
        f"{res['geometry']}). Paper PSNR (counts clamped to [0, 1], data range 1 count), dB, SBD / low-pass "
        "(Gaussian width chosen per image and per region on the ground truth). Regions from the clean image "
        "(`training.evaluate.regions.regions_from_clean`).",
        f"Rerun: `{command}`",
        "",
        "| image | draw | whole | vacuum | support | particle | vacuum / support / particle area |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cells = []
        for k in ("whole", *REGION_NAMES.values()):
            lp = r["low_pass_oracle"].get(k)
            cells.append("n/a" if lp is None else f"{r['sbd'][k]:.2f} / {lp['paper_psnr']:.2f}")
        fr = r["fractions"]
        lines.append(
            f"| {r['image']} | {r['draw']} | {' | '.join(cells)} | "
            f"{fr['vacuum']:.2f} / {fr['support']:.2f} / {fr['particle']:.2f} |"
        )
    s = res["summary"]
    lines += ["", "| mean | SBD | low-pass | margin (mean) | margin (worst image) |", "|---|---|---|---|---|"]
    for k, v in s.items():
        if v["sbd_mean"] is None:
            continue
        lines.append(
            f"| {k} | {v['sbd_mean']:.2f} | {v['low_pass_mean']:.2f} | {v['margin_mean_dB']:+.2f} | "
            f"{v['margin_min_dB']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_figure(examples: list[dict[str, np.ndarray]], names: list[str], path: Path) -> Path:
    """Clean / noisy / denoised / error per image, region borders drawn on the error panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(examples)
    fig, axes = plt.subplots(n, 4, figsize=(16, 4 * n), squeeze=False)
    for row, (ex, name) in enumerate(zip(examples, names, strict=True)):
        lo, hi = np.percentile(ex["clean"], [0.5, 99.5])
        err = ex["denoised"] - ex["clean"]
        e = float(np.percentile(np.abs(err), 99.5)) or 1.0
        for ax, img, title, kw in (
            (axes[row, 0], ex["clean"], f"{name[:30]}: clean", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[row, 1], ex["noisy"], "noisy (counts)", {"cmap": "gray"}),
            (axes[row, 2], ex["denoised"], "denoised", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[row, 3], err, "denoised - clean; regions", {"vmin": -e, "vmax": e, "cmap": "RdBu_r"}),
        ):
            ax.imshow(img, **kw)
            ax.set_title(title)
            ax.set_axis_off()
        axes[row, 3].contour(ex["regions"], levels=[0.5, 1.5], colors=["k", "g"], linewidths=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path
