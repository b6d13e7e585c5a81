"""Fig. 3.4-style study: do likelihood ratios separate real columns from the denoiser's artefacts?

For each image of the chosen split: Poisson counts at the image's dose -> denoised (a trained engine,
or a Gaussian filter as a classical baseline) -> columns detected -> matched one-to-one to the ground
truth within ``match_distance_A`` (Hungarian assignment on distance) -> true positives (matched
detections), false positives (unmatched detections), false negatives (unmatched true columns, their
LLR evaluated at the true position, rounded to a pixel). Columns whose contrast is not the detected
polarity (e.g. intermediate-contrast ones) are "don't care": detections on them are neither TP nor FP,
they are never FN. Each FP is attributed to surface or bulk by its nearest true column, as the paper
reports the surface. The output is the LLR distribution of each group, ROC AUC of the LLR for TP vs
FP, a JSON summary and a box-plot + ROC figure.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from sbd_stream.compute.likelihood import ColumnPolarity, LikelihoodConfig, LikelihoodStage
from sbd_stream.compute.noise import poisson_counts
from sbd_stream.invocation import invocation
from training.evaluate.progress import tracked
from training.sim.splits import split_indices

GROUPS = ("tp", "fp", "fn")


class DatasetLike(Protocol):
    def __len__(self) -> int: ...
    def clean(self, i: int) -> np.ndarray: ...
    def columns(self, i: int) -> dict[str, np.ndarray]: ...
    def meta(self, i: int) -> dict[str, Any]: ...
    def structure_ids(self) -> np.ndarray: ...


class DenoiserKind(enum.StrEnum):
    engine = "engine"  # the trained network through sbd_stream.denoiser.Denoiser
    gaussian = "gaussian"  # Gaussian filter of the counts: a classical baseline, runs without an engine
    clean = "clean"  # the clean image itself: a perfect denoiser, to calibrate detection and see the LLR's
    # own power without network artefacts (an upper bound, not an evaluation of any denoiser)


class PolaritySource(enum.StrEnum):
    bright = "bright"
    dark = "dark"
    truth = "truth"  # per image from its contrast class (white -> bright, black -> dark, other skipped)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path
    engine: str | None = Field(None, description="engine directory or name (denoiser=engine)")
    backend: str = Field("auto", description="engine backend: auto | torch | onnxruntime | tensorrt")
    denoiser: DenoiserKind = DenoiserKind.engine
    gaussian_sigma_A: float = Field(0.4, gt=0)
    split: str = Field("test", pattern="^(train|val|test|all)$")
    max_images: int | None = Field(None, ge=1)
    frames_per_image: int = Field(1, ge=1, description="independent noise realisations per image")
    evidence_frames: int = Field(
        0,
        ge=0,
        description="0: score each column on the counts the denoiser saw (the paper's setting, and what "
        "the service publishes); N >= 1: on the sum of N further independent frames of the same clean "
        "image at the same dose (the next frames of a static specimen), which the denoiser never saw",
    )
    dose: float | None = Field(None, gt=0, description="counts/px in vacuum; default: each image's meta")
    polarity: PolaritySource = PolaritySource.truth
    match_distance_A: float = Field(0.7, gt=0)
    likelihood: dict[str, Any] = Field(default_factory=dict, description="LikelihoodConfig overrides")
    device: str = "cpu"
    seed: int = 0
    out: Path = Path("benchmarks/results")
    name: str = "likelihood_study"


def structure_split(structure_ids: np.ndarray, split: str) -> np.ndarray:
    """Image indices of ``split``: the very split training used, so the study's test images are
    structures the engine never saw (``training.sim.splits``, whole structures per split)."""
    ids = np.asarray(structure_ids).astype(str)
    if split == "all":
        return np.arange(len(ids))
    return split_indices(ids)[split]


def match_columns(det: np.ndarray, truth: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching within ``max_dist`` (pixels): (pairs (M, 2) [det, truth], distances)."""
    if len(det) == 0 or len(truth) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    d = np.linalg.norm(det[:, None, :] - truth[None, :, :], axis=2)
    cost = np.where(d <= max_dist, d, 1e6)
    r, c = linear_sum_assignment(cost)
    ok = d[r, c] <= max_dist
    return np.stack([r[ok], c[ok]], 1).astype(np.int64), d[r[ok], c[ok]]


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(LLR of a random positive > that of a random negative), ties count half (Mann-Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(pos: np.ndarray, neg: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """TPR and FPR of "keep if LLR > t" on a grid of thresholds spanning both samples."""
    if len(pos) == 0 or len(neg) == 0:
        return {"threshold": [], "tpr": [], "fpr": []}
    t = np.quantile(np.concatenate([pos, neg]), np.linspace(0, 1, points))
    t = np.concatenate([[-np.inf], t, [np.inf]])
    return {
        "threshold": [float(v) for v in t[1:-1]],
        "tpr": [float((pos > v).mean()) for v in t],
        "fpr": [float((neg > v).mean()) for v in t],
    }


def _summary(x: np.ndarray) -> dict[str, Any]:
    if len(x) == 0:
        return {"n": 0}
    q = np.percentile(x, [0, 25, 50, 75, 100])
    return {"n": len(x), "mean": float(x.mean()), "min": q[0], "q25": q[1], "median": q[2], "q75": q[3],
            "max": q[4], "frac_negative": float((x < 0).mean())}  # fmt: skip


def _gaussian_denoise(raw: torch.Tensor, sigma_px: float) -> torch.Tensor:
    from scipy import ndimage

    out = [ndimage.gaussian_filter(f.numpy().astype(np.float64), sigma_px, mode="mirror") for f in raw.cpu()]
    return torch.from_numpy(np.stack(out).astype(np.float32))


def _polarity(cfg: StudyConfig, meta: dict[str, Any], cols: dict[str, np.ndarray]) -> ColumnPolarity | None:
    if cfg.polarity is not PolaritySource.truth:
        return ColumnPolarity(cfg.polarity.value)
    cls = meta.get("contrast_class")
    if cls is None:  # fall back to the majority of the columns
        cls = int(np.bincount(cols["contrast"].astype(np.int64), minlength=3).argmax())
    return {2: ColumnPolarity.bright, 0: ColumnPolarity.dark}.get(int(cls))


def run_study(cfg: StudyConfig, dataset: DatasetLike | None = None) -> dict[str, Any]:
    """Run the study and write ``<out>/<name>.json`` and ``<out>/<name>.png``; returns the summary."""
    if dataset is None:
        from training.sim.dataset import SimulatedDataset

        dataset = SimulatedDataset(cfg.data)
    idx = structure_split(dataset.structure_ids(), cfg.split)
    if cfg.max_images is not None:
        idx = idx[: cfg.max_images]
    denoiser = None
    if cfg.denoiser is DenoiserKind.engine:
        from sbd_stream.engines.denoiser import Denoiser

        if cfg.engine is None:
            raise ValueError("denoiser=engine needs --engine (a directory or name)")
        denoiser = Denoiser.load(cfg.backend, cfg.engine, device=cfg.device)
    rng = np.random.default_rng(cfg.seed)
    # evidence frames from their own stream: the denoised frames (and so the detections) are the same
    # whatever evidence_frames is, so runs with different N score the same columns
    ev_rng = np.random.default_rng([cfg.seed, 1])
    llr: dict[str, dict[str, list[float]]] = {g: {"all": [], "surface": []} for g in GROUPS}
    skipped: list[int] = []
    lk_cfg: dict[str, Any] = {}
    stages: dict[tuple[float, str], LikelihoodStage] = {}
    for i in tracked(idx, f"likelihood study ({cfg.denoiser.value})", f"{cfg.split} images"):
        meta, cols = dataset.meta(int(i)), dataset.columns(int(i))
        pol = _polarity(cfg, meta, cols)
        if pol is None:
            skipped.append(int(i))
            continue
        px, dose = float(meta["pixel_size_A"]), float(cfg.dose or meta["dose"])
        key = (px, pol.value)
        if key not in stages:
            lc = LikelihoodConfig(**{"pixel_size_A": px, "polarity": pol, **cfg.likelihood})
            stages[key] = LikelihoodStage(lc, cfg.device)
            lk_cfg[f"{px:g}A/{pol.value}"] = lc.describe()
        stage = stages[key]
        clean = dataset.clean(int(i))
        raw = torch.from_numpy(
            np.stack([poisson_counts(clean, dose, rng, np.float32) for _ in range(cfg.frames_per_image)])
        )
        if denoiser is not None:
            den = denoiser.denoise(raw.to(denoiser.device), dose=dose).to(cfg.device)
        elif cfg.denoiser is DenoiserKind.clean:
            perfect = np.repeat(clean[None] * dose, len(raw), 0).astype(np.float32)
            den = torch.from_numpy(perfect).to(cfg.device)
        else:
            den = _gaussian_denoise(raw, cfg.gaussian_sigma_A / px).to(cfg.device)
        if cfg.evidence_frames:
            # evidence the denoiser did not fit: N fresh frames, summed; rates x N, so the LLR is the
            # sum of the N frames' LLRs at the denoised rates (detections are still made on `den`)
            n_ev = cfg.evidence_frames
            raw = torch.from_numpy(
                np.stack(
                    [
                        sum(poisson_counts(clean, dose, ev_rng, np.float32) for _ in range(n_ev))
                        for _ in range(len(raw))
                    ]
                )
            )
            den = den * n_ev
        res = stage(raw.to(cfg.device), den)
        truth = np.asarray(cols["xy"], np.float64)
        want = 2 if pol is ColumnPolarity.bright else 0
        scored = np.asarray(cols["contrast"]) == want
        surface = np.asarray(cols["is_surface"], bool)
        for b, fc in enumerate(res.columns):
            det = fc.positions.cpu().numpy().astype(np.float64)
            det_llr = fc.llr.cpu().numpy().astype(np.float64)
            pairs, _ = match_columns(det, truth[scored], cfg.match_distance_A / px)
            tp_truth = np.flatnonzero(scored)[pairs[:, 1]]
            unmatched = np.setdiff1d(np.arange(len(det)), pairs[:, 0])
            dont_care = np.zeros(len(det), bool)
            if (~scored).any() and len(unmatched):
                near, _ = match_columns(det[unmatched], truth[~scored], cfg.match_distance_A / px)
                dont_care[unmatched[near[:, 0]]] = True
            fp = np.array([j for j in unmatched if not dont_care[j]], np.int64)
            fn = np.setdiff1d(np.flatnonzero(scored), tp_truth)
            if len(fn):
                h, w = clean.shape
                pos = np.clip(np.rint(truth[fn]).astype(np.int64), 0, [h - 1, w - 1])
                cen = torch.from_numpy(np.concatenate([np.full((len(fn), 1), b), pos], 1)).to(cfg.device)
                fn_llr = stage.llr(raw.to(cfg.device), den, cen, res.vacuum)[0].cpu().numpy()
            else:
                fn_llr = np.zeros(0)
            fp_surface = np.zeros(len(fp), bool)
            if len(fp) and len(truth):
                nearest = np.linalg.norm(det[fp][:, None] - truth[None], axis=2).argmin(1)
                fp_surface = surface[nearest]
            for g, vals, surf in (
                ("tp", det_llr[pairs[:, 0]], surface[tp_truth]),
                ("fp", det_llr[fp] if len(fp) else np.zeros(0), fp_surface),
                ("fn", fn_llr, surface[fn]),
            ):
                llr[g]["all"] += [float(v) for v in vals]
                llr[g]["surface"] += [float(v) for v, s in zip(vals, surf, strict=True) if s]
    result = _report(cfg, llr, len(idx), skipped, lk_cfg, denoiser)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / f"{cfg.name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    _plot(llr, result, cfg.out / f"{cfg.name}.png")
    return result


def _report(
    cfg: StudyConfig,
    llr: dict[str, dict[str, list[float]]],
    n_images: int,
    skipped: list[int],
    lk_cfg: dict[str, Any],
    denoiser: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": invocation(),
        "config": cfg.model_dump(mode="json"),
        "engine": {"engine_id": denoiser.engine_id, "card": denoiser.card} if denoiser is not None else None,
        "images": n_images,
        "images_skipped_no_polarity": len(skipped),
        "likelihood_config": lk_cfg,
        "groups": {},
        "roc": {},
    }
    for region in ("all", "surface"):
        a = {g: np.asarray(llr[g][region]) for g in GROUPS}
        out["groups"][region] = {g: _summary(a[g]) for g in GROUPS}
        n_tp, n_fp, n_fn = (len(a[g]) for g in GROUPS)
        out["groups"][region]["precision"] = n_tp / (n_tp + n_fp) if n_tp + n_fp else None
        out["groups"][region]["recall"] = n_tp / (n_tp + n_fn) if n_tp + n_fn else None
        out["roc"][region] = {
            "auc_tp_vs_fp": roc_auc(a["tp"], a["fp"]),
            "auc_fn_vs_fp": roc_auc(a["fn"], a["fp"]),
            "curve_tp_vs_fp": roc_curve(a["tp"], a["fp"]),
        }
    return out


def _plot(llr: dict[str, dict[str, list[float]]], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = {"fp": "false positives", "tp": "true positives", "fn": "false negatives"}
    for ax, region in zip(axes[:2], ("surface", "all"), strict=True):
        data = [np.asarray(llr[g][region]) for g in ("fp", "tp", "fn")]
        labels = [f"{names[g]}\n(n={len(d)})" for g, d in zip(("fp", "tp", "fn"), data, strict=True)]
        keep = [j for j, d in enumerate(data) if len(d)]
        if keep:
            ax.boxplot([data[j] for j in keep], whis=(0, 100))
            ax.set_xticks(range(1, len(keep) + 1), [labels[j] for j in keep])
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("log-likelihood ratio (column vs vacuum)")
        ax.set_title(f"LLR by outcome: {region} columns")
    ax = axes[2]
    for region, style in (("surface", "-"), ("all", "--")):
        roc = result["roc"][region]
        if roc["curve_tp_vs_fp"]["tpr"]:
            auc = roc["auc_tp_vs_fp"]
            c = roc["curve_tp_vs_fp"]
            ax.plot(c["fpr"], c["tpr"], style, label=f"{region}: AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("false positives kept (LLR > t)")
    ax.set_ylabel("true positives kept (LLR > t)")
    ax.set_title("LLR as a TP-vs-FP classifier")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    cfg = result["config"]
    fig.suptitle(f"{Path(cfg['data']).name}, split {cfg['split']}, denoiser {cfg['denoiser']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
