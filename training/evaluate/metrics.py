"""Image-quality and atom-detection metrics (Sec. 5.2 and 5.3.1).

PSNR and SSIM are computed in clean units (vacuum = 1) with the data range of the *clean* image, so a
method cannot raise its score by rescaling its output. Atom detection follows Sec. 5.3.1: columns are
found with a Laplacian-of-Gaussian blob detector (``skimage.feature.blob_log``) on the image, or on its
negative for black-contrast images, and compared with the simulator's ground-truth Pt column positions.

Matching: detections and ground-truth columns are paired one-to-one by the Hungarian algorithm, and a
pair counts only when the centres are closer than ``match_A`` (default 1.2 A: half the shortest
projected Pt-Pt column distance, 2.40 A, so one detection can never explain two columns). The paper's
100 px threshold refers to its own, much finer image grid. A matched detection takes the class (surface /
bulk) of its column; an unmatched one is charged to the class of the nearest Pt column, so a spurious
atom in the vacuum next to the particle is a surface false positive. Detections whose nearest column is
a support (Ce/O) column are ignored: the metrics are about the nanoparticle. Ground truth uses only Pt
columns whose contrast in the clean image matches the image's polarity (an intermediate-contrast column
is invisible to any detector, including one run on the clean image).

Following the paper's wording, precision = |A∩B| / |detections| and recall = |A∩B| / |ground truth|
(the paper's equations swap the denominators relative to their prose; we follow the prose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

Z_PT = 78
BLACK, INTERMEDIATE, WHITE = 0, 1, 2


def data_range(clean: np.ndarray) -> float:
    r = float(clean.max() - clean.min())
    return r if r > 0 else 1.0


def psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(estimate, np.float64) - clean) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range(clean) ** 2 / mse)


def ssim(clean: np.ndarray, estimate: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            clean.astype(np.float64), np.asarray(estimate, np.float64), data_range=data_range(clean)
        )
    )


class DetectionSpec(BaseModel):
    """LoG detector and matching settings; the threshold is calibrated on clean validation images."""

    pixel_size_A: float = Field(gt=0)
    sigma_A: tuple[float, float] = (0.3, 0.6)
    num_sigma: int = 4
    threshold: float = Field(0.02, gt=0, description="blob_log threshold, in clean units (vacuum = 1)")
    overlap: float = 0.5
    match_A: float = 1.2
    border_px: int = 6


def detect_atoms(image: np.ndarray, polarity: int, spec: DetectionSpec) -> np.ndarray:
    """(K, 2) [row, col] centres of bright (white) or dark (black) blobs in a clean-units image."""
    from skimage.feature import blob_log

    img = np.asarray(image, np.float64)
    img = img - np.median(img)
    if polarity == BLACK:
        img = -img
    lo, hi = (s / spec.pixel_size_A for s in spec.sigma_A)
    blobs = blob_log(
        np.clip(img, 0, None),
        min_sigma=lo,
        max_sigma=hi,
        num_sigma=spec.num_sigma,
        threshold=spec.threshold,
        overlap=spec.overlap,
        exclude_border=False,
    )
    return blobs[:, :2].astype(np.float32) if len(blobs) else np.zeros((0, 2), np.float32)


@dataclass
class Counts:
    """True positives, detections and ground-truth columns of one class in one image."""

    tp: int = 0
    detected: int = 0
    truth: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.tp += other.tp
        self.detected += other.detected
        self.truth += other.truth
        return self

    def scores(self) -> dict[str, float]:
        p = self.tp / self.detected if self.detected else (1.0 if self.truth == 0 else 0.0)
        r = self.tp / self.truth if self.truth else 1.0
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        union = self.detected + self.truth - self.tp
        j = self.tp / union if union else 1.0
        return {"precision": p, "recall": r, "f1": f1, "jaccard": j}


def image_polarity(columns: dict[str, np.ndarray]) -> int:
    """White or black: the majority contrast of the visible Pt columns (ties and none -> white)."""
    pt = columns["species"] == Z_PT if "species" in columns else np.ones(len(columns["xy"]), bool)
    c = np.asarray(columns["contrast"])[pt]
    return BLACK if np.sum(c == BLACK) > np.sum(c == WHITE) else WHITE


def match_detections(
    detections: np.ndarray, columns: dict[str, np.ndarray], polarity: int, spec: DetectionSpec, shape: tuple
) -> dict[str, Counts]:
    """Surface and bulk counts for one image (see the module docstring for the rules)."""
    xy = np.asarray(columns["xy"], np.float64)
    species = np.asarray(columns.get("species", np.full(len(xy), Z_PT)))
    is_pt = species == Z_PT
    surface = np.asarray(columns["is_surface"], bool)
    visible = np.asarray(columns["contrast"]) == polarity
    h, w = shape
    b = spec.border_px

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[:, 0] >= b) & (p[:, 0] < h - b) & (p[:, 1] >= b) & (p[:, 1] < w - b)

    det = np.asarray(detections, np.float64).reshape(-1, 2)
    det = det[inside(det)]
    out = {"surface": Counts(), "bulk": Counts()}
    if len(xy) == 0:
        return out
    truth = is_pt & visible & inside(xy)
    radius = spec.match_A / spec.pixel_size_A
    # nearest column of any kind decides whom an unmatched detection is charged to
    owner = cKDTree(xy).query(det)[1] if len(det) else np.zeros(0, int)
    t_idx = np.flatnonzero(truth)
    matched_det = np.zeros(len(det), bool)
    if len(det) and len(t_idx):
        d = np.linalg.norm(det[:, None, :] - xy[t_idx][None], axis=2)
        rows, cols = linear_sum_assignment(np.where(d < radius, d, 1e6))
        ok = d[rows, cols] < radius
        for r, c in zip(rows[ok], cols[ok], strict=True):
            matched_det[r] = True
            out["surface" if surface[t_idx[c]] else "bulk"].tp += 1
            out["surface" if surface[t_idx[c]] else "bulk"].detected += 1
    for k in np.flatnonzero(~matched_det):
        o = owner[k]
        if is_pt[o]:
            out["surface" if surface[o] else "bulk"].detected += 1
    out["surface"].truth = int(np.sum(truth & surface))
    out["bulk"].truth = int(np.sum(truth & ~surface))
    return out


def detection_scores(
    image: np.ndarray, columns: dict[str, np.ndarray], spec: DetectionSpec
) -> dict[str, dict[str, float]]:
    """Per-class precision / recall / F1 / Jaccard (plus the class's ground-truth count) for one frame."""
    pol = image_polarity(columns)
    counts = match_detections(detect_atoms(image, pol, spec), columns, pol, spec, image.shape)
    return {k: {**v.scores(), "truth": float(v.truth)} for k, v in counts.items()}


def calibrate_threshold(
    cleans: list[np.ndarray], columns: list[dict[str, np.ndarray]], spec: DetectionSpec, grid: list[float]
) -> tuple[float, dict[float, float]]:
    """Pick the LoG threshold maximising mean F1 (surface + bulk) on clean validation images."""
    scores: dict[float, float] = {}
    for t in grid:
        s = spec.model_copy(update={"threshold": t})
        f1 = [
            v["f1"]
            for c, cols in zip(cleans, columns, strict=True)
            for v in detection_scores(c, cols, s).values()
            if v["truth"] > 0
        ]
        scores[t] = float(np.mean(f1)) if f1 else 0.0
    best = max(scores, key=lambda t: scores[t])
    return best, scores
