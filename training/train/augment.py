"""Training patches: random crops with the paper's augmentation and fresh Poisson noise per draw (Sec. 5).

Flips, a rotation in [-45, 45] degrees and a rescale in [0.75, 0.82] are folded into one affine map per
sample and applied with a single ``grid_sample`` to the *clean* image; noise is drawn afterwards, on the
patch itself, because the detector adds Poisson noise to the image it sees, not to the simulation.
The source window is placed so the rotated, rescaled patch stays inside the image whenever it fits;
otherwise reflection padding fills the corners (only for patches larger than the image allows).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch.nn import functional as F

from sbd_stream.compute.noise import poisson_counts_torch
from sbd_stream.compute.normalisation import Normalisation


class AugmentSpec(BaseModel):
    """Augmentation of Sec. 5; ``*_prob`` < 1 keeps the native pixel size / orientation in the mix."""

    patch: int = Field(128, gt=0, description="patch side in pixels (a multiple of the model's)")
    flips: bool = True
    max_rotation_deg: float = Field(45.0, ge=0, le=180)
    rotation_prob: float = Field(
        1.0, ge=0, le=1, description="probability of rotating; else the simulation's own orientation"
    )
    right_angles: bool = Field(
        False,
        description="also turn each sample by a random multiple of 90 degrees: with flips, all 8 "
        "orientations of the square lattice (a real frame can have its support on any side); with no "
        "other rotation or rescale the patch is then cut on whole pixels, so no interpolation",
    )
    rescale: tuple[float, float] = (0.75, 0.82)
    rescale_prob: float = Field(
        0.5, ge=0, le=1, description="probability of rescaling; else scale 1 (the test images' pixel size)"
    )
    dose_range: tuple[float, float] | None = Field(
        None, description="per-sample dose drawn uniformly from this range; None: the data set's dose"
    )
    dose_factors: tuple[float, float] | None = Field(
        None,
        description="per-sample dose = the data set's dose x a factor drawn log-uniformly from this range "
        "(e.g. (0.5, 2)); the input is still counts / that sample's expected vacuum counts",
    )


def affine_params(
    rng: np.random.Generator, n: int, spec: AugmentSpec, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample 2x2 maps (patch px -> source px) and window centres (source px from the image centre)."""
    mats = np.empty((n, 2, 2))
    centres = np.empty((n, 2))
    for k in range(n):
        theta = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
        if rng.random() >= spec.rotation_prob:
            theta = 0.0
        scale = rng.uniform(*spec.rescale) if rng.random() < spec.rescale_prob else 1.0
        flip = np.diag([-1.0 if spec.flips and rng.random() < 0.5 else 1.0 for _ in range(2)])
        quarter = int(rng.integers(4)) if spec.right_angles else 0
        c, s = math.cos(theta), math.sin(theta)
        a = np.array([[c, -s], [s, c]]) @ _quarter_turn(quarter) @ flip / scale  # patch (x, y) -> source
        mats[k] = a
        half = 0.5 * spec.patch * np.abs(a).sum(axis=1)  # half extent of the window in x and y
        free = np.maximum(np.array([width, height]) / 2 - half - 1, 0)
        centres[k] = rng.uniform(-free, free)
        if spec.right_angles and theta == 0.0 and scale == 1.0:  # whole-pixel window: exact samples
            odd = np.array([(width - spec.patch) % 2, (height - spec.patch) % 2]) / 2
            centres[k] = np.clip(np.round(centres[k] - odd) + odd, -free - odd, free + odd)
    return mats, centres


def _quarter_turn(k: int) -> np.ndarray:
    """Exact rotation by k x 90 degrees (no cos/sin rounding, so whole-pixel maps stay whole)."""
    return np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), k % 4)


def sample_patches(images: torch.Tensor, mats: np.ndarray, centres: np.ndarray, patch: int) -> torch.Tensor:
    """(B, H, W) clean images -> (B, 1, patch, patch) warped patches (bilinear, reflection padded)."""
    b, h, w = images.shape
    s_in = np.diag([w / 2, h / 2])
    theta = np.zeros((b, 2, 3))
    theta[:, :, :2] = np.linalg.inv(s_in) @ mats * (patch / 2)
    theta[:, :, 2] = centres / np.array([w / 2, h / 2])
    grid = F.affine_grid(
        torch.as_tensor(theta, dtype=images.dtype, device=images.device),
        [b, 1, patch, patch],
        align_corners=False,
    )
    return F.grid_sample(
        images[:, None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def noisy_pair(
    clean: torch.Tensor,
    dose: float | torch.Tensor,
    norm: Normalisation,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean patches -> (network input from fresh Poisson counts, target in the network's output units)."""
    counts = poisson_counts_torch(clean, dose, generator)
    return norm.to_input(counts, dose), (clean - norm.offset) / norm.scale


def draw_batch(
    images: torch.Tensor,
    rng: np.random.Generator,
    spec: AugmentSpec,
    dose: float,
    norm: Normalisation,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch from (B, H, W) source images: augmented clean patches plus fresh noise."""
    b, h, w = images.shape
    mats, centres = affine_params(rng, b, spec, h, w)
    clean = sample_patches(images, mats, centres, spec.patch).clamp_min(0)
    if spec.dose_factors is not None:
        lo, hi = np.log(spec.dose_factors[0]), np.log(spec.dose_factors[1])
        f = np.exp(rng.uniform(lo, hi, size=(b, 1, 1, 1)))
        d = torch.as_tensor(float(dose) * f, dtype=clean.dtype)
    elif spec.dose_range is not None:
        d = torch.as_tensor(rng.uniform(*spec.dose_range, size=(b, 1, 1, 1)), dtype=clean.dtype)
    else:
        d = torch.full((b, 1, 1, 1), float(dose), dtype=clean.dtype)
    gen = torch.Generator(device=clean.device).manual_seed(int(rng.integers(2**62)))
    return noisy_pair(clean, d.to(clean.device), norm, gen)
