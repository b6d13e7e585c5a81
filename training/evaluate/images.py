"""Evaluation on anyone's clean simulations: the product's own denoise path, scored per region.

Why: the project's own test split says how the engine does on the world it was trained in. A user with
Dr. Probe, abTEM or prismatic images asks how it does on theirs. This reads their clean images (TIFF,
MRC, NPY, HDF5), brings them to the detector's sampling (``resize`` as the paper's test code does,
0.785 for its released images), scales them so vacuum holds ``counts_per_px``, draws Poisson frames,
denoises them exactly as ``sbd-stream denoise`` does (``BatchStage``: bin, engine, back to detector
pixels) and scores whole frame, vacuum, support and particle (``regions_from_clean``: these images
carry no atomic model) against a Gaussian low-pass whose width is chosen per image and per region on
the ground truth (an oracle: no real denoiser can beat that choice of a blur).

Every score is the paper's PSNR (counts clamped to [0, 1], data range 1 count), a metric defined at the
paper's 0.45 counts per vacuum pixel. At another dose, clean and estimate are first rescaled to that
scale (x 0.45 / ``counts_per_px``: identity at 0.45), as the dose curve does (``dose_curve.py``): at 2
counts/px every count would otherwise sit above the clamp and every PSNR read ``inf``. Scores that are
not finite (a region the image lacks, a perfect match) are written as JSON ``null``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from training.evaluate.clean_images import (
    SUFFIXES,
    NoCleanImages,
    read_images,
    sampling_disagreements,
    stated_pixel_sizes,
)
from training.evaluate.regions import REGION_NAMES, region_fractions, region_psnrs, regions_from_clean
from training.evaluate.tables import strict, write_json

__all__ = [
    "SUFFIXES", "ImageEvalConfig", "evaluate_images", "markdown", "read_images", "write_figure",
    "written_whole",
]  # fmt: skip

PAPER_COUNTS_PER_PX = 0.45
"""Vacuum counts per 0.060 A pixel in the paper: where its metric's [0, 1] clamp and 1-count range hold."""
SCORE_NOTE = (
    "paper PSNR (counts clamped to [0, 1], data range 1 count) with clean and estimate rescaled to the "
    "paper's 0.45 counts per vacuum pixel (x 0.45 / counts_per_px, identity at 0.45; as the dose curve), "
    "so doses compare on one scale; null: not finite (a region absent from the image, or a perfect score)"
)


def region_doubt(name: str, fractions: dict[str, float]) -> str | None:
    """A warning when the regions look wrong: no support but mostly "particle" is a thin or amorphous
    support whose contrast has gaps (a 6 A carbon slab read as 0.27 / 0.00 / 0.73), scored as particle."""
    if fractions.get("support", 0.0) == 0.0 and fractions.get("particle", 0.0) > 0.5:
        return (
            f"{name}: no support region but {fractions['particle']:.0%} particle: the support rule needs "
            "rows the crystal spans across the whole width (training/evaluate/regions.py); a thin or "
            "amorphous support with gaps in its contrast is counted as particle"
        )
    return None


def _warn_stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


class ImageEvalConfig(BaseModel):
    folder: Path
    pixel_size_A: float = Field(gt=0, allow_inf_nan=False, description="A per pixel of the images as stored")
    resize: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="resampling factor before noise (paper test code: 0.785)"
    )
    counts_per_px: float = Field(
        0.45, gt=0, allow_inf_nan=False, description="vacuum counts per detector pixel per frame"
    )
    draws: int = Field(2, ge=1, description="Poisson frames per clean image")
    dataset: str | None = Field(None, description="HDF5 files: only this dataset (default: float images)")
    seed: int = 2026
    engine: str | None = Field(
        None,
        description="engine name or directory; None: what offline work picks (engines.card.offline_engine)",
    )
    backend: str = "auto"
    orientations: Literal[1, 2, 4, 8] = Field(
        8, description="as `sbd-stream denoise`: the engine over 8 orientations"
    )
    lowpass_sigmas_A: list[float] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.2]
    out_dir: Path = Path("benchmarks/results/images")

    @property
    def detector_pixel_A(self) -> float:
        return self.pixel_size_A / self.resize

    @property
    def score_scale(self) -> float:
        """Counts x this = counts at the paper's 0.45 per vacuum pixel, where its metric is defined."""
        return PAPER_COUNTS_PER_PX / self.counts_per_px


def prepare(img: np.ndarray, cfg: ImageEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Resampled to the detector pixel and scaled to counts (vacuum = counts_per_px); and its regions."""
    from sbd_stream.sources.emulator import resample

    if cfg.resize != 1.0:
        img = resample(img, cfg.pixel_size_A, cfg.detector_pixel_A)
    regions = regions_from_clean(img, cfg.detector_pixel_A)
    vac = regions == 0
    if vac.mean() < 0.01:
        raise ValueError("no vacuum found to set the dose on (the rule needs flat rows of vacuum)")
    level = float(np.median(img[vac]))
    if not level > 0:
        raise ValueError(f"vacuum level {level:.3g} is not positive (bright-field images: vacuum is bright)")
    counts = img / level * cfg.counts_per_px
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


def evaluate_images(
    cfg: ImageEvalConfig, log: Callable[[str], None] = print, warn: Callable[[str], None] = _warn_stderr
) -> dict[str, Any]:
    """Every clean image of ``cfg.folder`` through the engine and the oracle low-pass, per region.

    Images are read before the engine is loaded, so a folder with nothing usable fails at once. A file
    that cannot be read, and an image without vacuum to set the dose on, are skipped with one ``warn``
    line each and listed under ``skipped`` ({path, reason} for a file, {image, reason} for an image).
    The result is strict JSON but for ``_examples`` (arrays for the figure): scores that are not finite
    are None."""
    from sbd_stream.engines.card import default_engine_root, offline_engine
    from training.evaluate.detector import sbd_detector_method

    skipped: list[dict[str, str]] = []
    images = read_images(cfg.folder, cfg.dataset, skipped)
    for s in skipped:
        warn(f"skipped {s['path']}: {s['reason']}")
    unread = {s["path"] for s in skipped if "path" in s}
    disagree = sampling_disagreements(stated_pixel_sizes(cfg.folder, cfg.dataset, unread), cfg.pixel_size_A)
    for d in disagree:
        warn(
            f"{d['path']} states {d['stated_pixel_size_A']:.4g} A per pixel, --pixel-size says "
            f"{cfg.pixel_size_A:.4g} A: scored at --pixel-size; rerun with the file's value if it is right"
        )
    engine_dir = Path(cfg.engine) if cfg.engine and Path(cfg.engine).is_dir() else None
    engine_dir = engine_dir or default_engine_root() / (cfg.engine or offline_engine())
    px = cfg.detector_pixel_A
    method, info = sbd_detector_method(
        engine_dir, cfg.backend, px, cfg.counts_per_px, orientations=cfg.orientations
    )
    sigmas_px = [s / px for s in cfg.lowpass_sigmas_A]
    scale = cfg.score_scale  # to the paper's 0.45 counts/px: 1.0 there, so its scores are unchanged
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, np.ndarray]] = []
    for i, (name, raw) in enumerate(images):
        try:
            clean, regions = prepare(raw, cfg)
        except ValueError as e:
            skipped.append({"image": name, "reason": str(e)})  # read, but not usable: no file path
            warn(f"skipped image {name}: {e}")
            continue
        ref = clean * scale
        for d in range(cfg.draws):
            noisy = (
                np.random.default_rng([cfg.seed, i, d]).poisson(np.clip(clean, 0, None)).astype(np.float32)
            )
            t0 = time.perf_counter()
            den = method(noisy, cfg.counts_per_px) * cfg.counts_per_px
            dt = time.perf_counter() - t0
            sbd = region_psnrs(ref, den * scale, regions)
            lp = oracle_low_pass(ref, noisy * scale, regions, sigmas_px)
            if d == 0:  # what the engine's working pixel can carry at all: the clean frame binned and back
                ceiling = binning_ceiling(ref, regions, int(info["geometry"]["bin"]))
            rows.append(
                {
                    "image": name,
                    "draw": d,
                    "shape": list(clean.shape),
                    "fractions": region_fractions(regions),
                    "sbd": sbd,
                    "low_pass_oracle": lp,
                    "margin_dB": {
                        k: sbd[k] - lp[k]["paper_psnr"]
                        for k in lp
                        if np.isfinite(sbd[k]) and np.isfinite(lp[k]["paper_psnr"])
                    },
                    "binning_ceiling": ceiling,
                    "seconds": dt,
                }
            )
            log(_line(rows[-1]))
            if d == 0 and (doubt := region_doubt(name, rows[-1]["fractions"])) is not None:
                _warn_stderr(doubt)
            if d == 0:
                examples.append({"clean": clean, "noisy": noisy, "denoised": den, "regions": regions})
    if not rows:
        raise NoCleanImages(f"no usable clean image in {cfg.folder} ({len(skipped)} skipped, see above)")
    res = {
        "what": "paper PSNR per region; low-pass width chosen per image and per region on the ground truth "
        "(oracle)",
        "note": SCORE_NOTE,
        "score_scale": scale,
        "folder": str(cfg.folder),
        "config": cfg.model_dump(mode="json"),
        "detector_pixel_A": px,
        "engine": str(engine_dir),
        "backend": info["engine"],
        "orientations": info["orientations"],
        "orientations_requested": cfg.orientations,
        "geometry": info["geometry"],
        "rows": rows,
        "summary": _summary(rows),
        "skipped": skipped,
        "sampling_disagreements": disagree,
    }
    return {**strict(res), "_examples": examples}


def write_strict_json(obj: dict[str, Any], path: Path) -> None:
    """Strict JSON (``tables.write_json``), written whole (``written_whole``)."""
    with written_whole(path) as tmp:
        write_json(obj, tmp)


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path`` to write to, renamed to ``path`` only when the block
    succeeds and removed whatever happens.

    Why: a full disk cut ``evaluate_images.png`` short in place: the previous run's good 600 kB figure
    became a broken 20 kB file, while the command rightly failed. Now a failed write leaves the
    previous result as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the finite scores of each region (a region some image lacks is left out there)."""
    keys = ("whole", *REGION_NAMES.values())
    out: dict[str, Any] = {}
    for k in keys:
        s = [r["sbd"][k] for r in rows]
        lp = [r["low_pass_oracle"][k]["paper_psnr"] for r in rows if k in r["low_pass_oracle"]]
        mg = [r["margin_dB"][k] for r in rows if k in r["margin_dB"]]
        out[k] = {
            "sbd_mean": _mean(s),
            "low_pass_mean": _mean(lp),
            "margin_min_dB": _finite(mg, np.min),
            "margin_mean_dB": _mean(mg),
        }
    return out


def _finite(values: list[float], reduce: Callable[[np.ndarray], Any]) -> float | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(reduce(v)) if v.size else None


def _mean(values: list[float]) -> float | None:
    return _finite(values, np.mean)


def _line(r: dict[str, Any]) -> str:
    parts = [f"{r['image'][:40]:<40} draw {r['draw']}"]
    for k in ("whole", *REGION_NAMES.values()):
        lp = r["low_pass_oracle"].get(k, {}).get("paper_psnr", float("nan"))
        parts.append(f"{k} {r['sbd'][k]:6.2f} / {lp:6.2f}")
    return " | ".join(parts)


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(res: dict[str, Any], command: str) -> str:
    """The per-frame table and the per-region means of a strict result (None cells read n/a)."""
    cfg = res["config"]
    lines = [
        f"# Clean images from `{res['folder']}`: SBD vs an oracle low-pass, per region",
        "",
        f"Detector pixel {res['detector_pixel_A']:.4f} A, {cfg['counts_per_px']} counts/px "
        "in vacuum, "
        f"{cfg['draws']} Poisson draws per image; engine `{res['engine']}` ({res['backend']}, "
        f"averaged over {res.get('orientations', 1)} orientations, "
        f"{res['geometry']}). Paper PSNR (counts clamped to [0, 1], data range 1 count) with clean and "
        f"estimate rescaled to {PAPER_COUNTS_PER_PX} counts per vacuum pixel (x {res['score_scale']:.4g}), "
        "dB, SBD / low-pass (Gaussian width chosen per image and per region on the ground truth); n/a: not "
        "finite. Regions from the clean image (`training.evaluate.regions.regions_from_clean`).",
        f"Rerun: `{command}`",
        "",
        "| image | draw | whole | vacuum | support | particle | vacuum / support / particle area |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cells = []
        for k in ("whole", *REGION_NAMES.values()):
            lp = r["low_pass_oracle"].get(k)
            cells.append(f"{_f(r['sbd'][k])} / {_f(None if lp is None else lp['paper_psnr'])}")
        fr = r["fractions"]
        lines.append(
            f"| {r['image']} | {r['draw']} | {' | '.join(cells)} | "
            f"{fr['vacuum']:.2f} / {fr['support']:.2f} / {fr['particle']:.2f} |"
        )
    lines += ["", "| mean | SBD | low-pass | margin (mean) | margin (worst image) |", "|---|---|---|---|---|"]
    for k, v in res["summary"].items():
        lines.append(
            f"| {k} | {_f(v['sbd_mean'])} | {_f(v['low_pass_mean'])} | {_f(v['margin_mean_dB'], '+.2f')} | "
            f"{_f(v['margin_min_dB'], '+.2f')} |"
        )
    if res.get("skipped"):
        lines += ["", "Skipped:"]
        lines += [f"- `{s.get('path') or s.get('image')}`: {s['reason']}" for s in res["skipped"]]
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
    try:
        with written_whole(path) as tmp:
            fig.savefig(tmp, dpi=70, format=path.suffix.lstrip(".") or "png")  # tmp's name has no .png
    finally:
        plt.close(fig)
    return path
