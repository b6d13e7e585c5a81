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
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

Z_PT = 78
BLACK, INTERMEDIATE, WHITE = 0, 1, 2


POLARITIES = {BLACK: "BLACK", WHITE: "WHITE"}
"""The polarities ``detect_atoms`` takes (``image_polarity`` returns one of them)."""
SSIM_MIN_SIDE = 7
"""skimage's default SSIM window: smaller images have no score."""


def as_image(x: Any) -> np.ndarray:
    """An array-like (NumPy array, nested list, torch tensor on any device) as a float64 array."""
    if hasattr(x, "detach"):  # torch, without importing it
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def image_pair(clean: Any, estimate: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 arrays of one shape; a mismatch raises (NumPy would broadcast it silently)."""
    c, e = as_image(clean), as_image(estimate)
    if c.shape != e.shape:
        raise ValueError(
            f"{metric}(clean, estimate): clean {c.shape} and estimate {e.shape} differ; "
            "give two images of one shape, the noise-free one first"
        )
    return c, e


def data_range(clean: Any) -> float:
    c = as_image(clean)
    r = float(c.max() - c.min())
    return r if r > 0 else 1.0


def psnr(clean: Any, estimate: Any) -> float:
    """PSNR in dB of ``estimate`` against ``clean`` (first), with the clean image's range (max - min).

    The order matters: the range comes from the first argument. ``sbd_stream.compute.quality.psnr``
    takes (estimate, truth) instead; both refuse images of different shapes.
    """
    c, e = image_pair(clean, estimate, "psnr")
    mse = float(np.mean((e - c) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range(c) ** 2 / mse)


def ssim(clean: Any, estimate: Any) -> float:
    """SSIM of two 2-D images (clean first) with the clean image's range; a stack is refused, not averaged."""
    from skimage.metrics import structural_similarity

    c, e = image_pair(clean, estimate, "ssim")
    if c.ndim != 2:
        raise ValueError(f"ssim(clean, estimate) takes one 2-D image each, got {c.shape}: score each frame")
    if min(c.shape) < SSIM_MIN_SIDE:
        raise ValueError(
            f"ssim needs images of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} pixels, got {c.shape}"
        )
    return float(structural_similarity(c, e, data_range=data_range(c)))


class DetectionSpec(BaseModel):
    """LoG detector and matching settings; the threshold is calibrated on clean validation images.

    Validated: a negative ``match_A`` once gave F1 = 0 and a reversed ``sigma_A`` range was accepted.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    pixel_size_A: float = Field(gt=0)
    sigma_A: tuple[float, float] = Field((0.3, 0.6), description="(smallest, largest) LoG sigma, Angstrom")
    num_sigma: int = Field(4, ge=1)
    threshold: float = Field(0.02, gt=0, description="blob_log threshold, in clean units (vacuum = 1)")
    overlap: float = Field(0.5, ge=0, le=1)
    match_A: float = Field(1.2, gt=0, description="a detection matches a column closer than this")
    border_px: int = Field(6, ge=0)

    @model_validator(mode="after")
    def _sigma_range(self) -> DetectionSpec:
        lo, hi = self.sigma_A
        if not 0 < lo <= hi:
            raise ValueError(
                f"sigma_A must be (smallest, largest) with 0 < smallest <= largest, got {self.sigma_A}"
            )
        return self


def detect_atoms(image: Any, polarity: int, spec: DetectionSpec) -> np.ndarray:
    """(K, 2) [row, col] centres of bright (``WHITE``) or dark (``BLACK``) blobs in a clean-units image.

    ``polarity`` is ``WHITE`` or ``BLACK`` (``image_polarity`` gives one); anything else, a NaN / Inf
    pixel or a non-2-D image raises ``ValueError`` (they once gave 0 detections, or white, silently).
    """
    from skimage.feature import blob_log

    if isinstance(polarity, bool) or not isinstance(polarity, int | np.integer) or polarity not in POLARITIES:
        raise ValueError(
            f"polarity must be metrics.WHITE ({WHITE}) or metrics.BLACK ({BLACK}), got {polarity!r}; "
            "intermediate-contrast images have no detectable columns"
        )
    img = as_image(image)
    if img.ndim != 2:
        raise ValueError(f"detect_atoms takes one 2-D image, got {img.shape}")
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise ValueError(
            f"image has {bad} non-finite (NaN or Inf) pixel{'s' if bad > 1 else ''} of {img.size}"
        )
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
    img = as_image(image)
    counts = match_detections(detect_atoms(img, pol, spec), columns, pol, spec, img.shape)
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
