"""Likelihood parameters: physical values, their bounds, and the pixel values derived from them.

Split from ``likelihood.py`` (the stage) so each stays small; ``likelihood`` re-exports every name here.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ColumnPolarity(enum.StrEnum):
    """Whether atomic columns look brighter or darker than their surroundings (it depends on defocus)."""

    bright = "bright"
    dark = "dark"


class VacuumMode(enum.StrEnum):
    """How the null-hypothesis rate lam0 is obtained."""

    estimate = "estimate"  # mean raw count over the flattest part of the denoised frame (see estimate_vacuum)
    fixed = "fixed"  # a configured value in counts per pixel (e.g. the dose the engine was trained for)


class ColumnModel(enum.StrEnum):
    """What "a column is here" predicts for the counts in its region R (the LLR's alternative)."""

    constant = "constant"  # the paper's low-dimensional model: the denoised mean over R on every pixel
    pattern = "pattern"  # the denoised frame itself, pixel by pixel over R


PIXEL_RANGE_A = (0.01, 5.0)
"""Pixel sizes accepted, Angstrom: from 6x finer than the 0.060 A detector to far coarser than any atom."""
MAX_PX = {"radius_px": 128, "kernel_radius_px": 512, "min_distance_px": 256, "vacuum_block_px": 4096}
"""Largest derived pixel values: a disk of ~51,000 pixels, Gaussian kernels of 1,025 taps (memory bounds)."""


class LikelihoodConfig(BaseModel):
    """Detection and likelihood parameters, in physical units; pixel values are derived from the pixel size.

    ``pixel_size_A`` has no default: it is the sampling of the frames scored (the working pixel the
    service bins to, 0.24 A for the shipped engines; not the detector's 0.060 A), and a wrong one
    silently scales every radius. Values are finite and bounded (``PIXEL_RANGE_A``, ``MAX_PX``): an
    extreme pixel size or radius once allocated gigabytes before failing. Record ``describe()`` next to
    the maps: it holds both the physical and the derived pixel values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    pixel_size_A: float = Field(
        ge=PIXEL_RANGE_A[0],
        le=PIXEL_RANGE_A[1],
        description="sampling of the frames scored, A/pixel: the (binned) working pixel, not the detector's",
    )
    column_radius_A: float = Field(
        0.7, gt=0, le=20, description="radius of the disk region R around a column"
    )
    log_sigma_A: float | None = Field(
        None,
        gt=0,
        le=20,
        description="LoG scale; default column_radius_A / sqrt(2) (blob radius sqrt(2) sigma)",
    )
    polarity: ColumnPolarity = ColumnPolarity.bright
    threshold: float = Field(
        0.05,
        ge=0,
        description="minimum scale-normalised LoG response, in units of the vacuum level "
        "(a Gaussian column of contrast A and width sigma gives A/2)",
    )
    min_distance_A: float = Field(
        1.0, gt=0, le=50, description="a column must be the LoG extremum within this"
    )
    column_model: ColumnModel = Field(
        ColumnModel.constant, description="the LLR's alternative over R: the denoised mean or pixels"
    )
    vacuum_mode: VacuumMode = VacuumMode.estimate
    vacuum_counts: float | None = Field(None, gt=0, description="lam0 in counts/pixel when vacuum_mode=fixed")
    vacuum_fraction: float = Field(
        0.1, gt=0, le=1, description="fraction of the blocks (the flattest) taken as vacuum by the estimator"
    )
    vacuum_block_A: float = Field(
        5.0, gt=0, le=1000, description="side of the estimator's square blocks; wider than the column spacing"
    )
    truncate: float = Field(
        4.0, gt=0, le=10, description="Gaussian kernels reach truncate * sigma (as scipy)"
    )
    min_rate: float = Field(
        1e-6, gt=0, le=1, description="floor on lam0 and lam1, counts/pixel, to keep logs finite"
    )

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> LikelihoodConfig:
        if self.vacuum_mode is VacuumMode.fixed and self.vacuum_counts is None:
            raise ValueError("vacuum_mode=fixed needs vacuum_counts")
        return self

    @model_validator(mode="after")
    def _pixel_values_bounded(self) -> LikelihoodConfig:
        if self.pixel_size_A is None:  # config.LikelihoodSettings: set later from the engine's working pixel
            return self
        for name, limit in MAX_PX.items():
            value = getattr(self, name)
            if value > limit:
                raise ValueError(
                    f"{name} = {value:.4g} at pixel_size_A {self.pixel_size_A:g} A exceeds {limit}: "
                    "give the working pixel of the frames scored, or smaller radii / distances"
                )
        return self

    # -- derived pixel quantities (the single place where Angstrom become pixels) -------------------------
    @property
    def radius_px(self) -> float:
        return self.column_radius_A / self.pixel_size_A

    @property
    def sigma_px(self) -> float:
        s = self.log_sigma_A if self.log_sigma_A is not None else self.column_radius_A / math.sqrt(2.0)
        return s / self.pixel_size_A

    @property
    def kernel_radius_px(self) -> int:
        return int(self.truncate * self.sigma_px + 0.5)

    @property
    def min_distance_px(self) -> int:
        return max(1, round(self.min_distance_A / self.pixel_size_A))

    @property
    def vacuum_block_px(self) -> int:
        return max(2, round(self.vacuum_block_A / self.pixel_size_A))

    def describe(self) -> dict[str, Any]:
        """Configuration plus derived pixel values, for recording beside the maps."""
        out = self.model_dump(mode="json")
        out.update(
            radius_px=self.radius_px,
            sigma_px=self.sigma_px,
            kernel_radius_px=self.kernel_radius_px,
            min_distance_px=self.min_distance_px,
            vacuum_block_px=self.vacuum_block_px,
            region_pixels=len(disk_offsets(self.radius_px)),
        )
        return out


def disk_offsets(radius_px: float) -> np.ndarray:
    """Integer offsets (dy, dx) with dy^2 + dx^2 <= r^2, row-major: the pixels of a region R.

    The grid's half-width has the same 1e-9 tolerance as the distance test: a radius computed in Angstrom
    over a pixel size lands just under a whole number (0.7 / 0.14 = 4.999999999999999), and a bare floor
    dropped the four axis pixels at exactly r while keeping (3, 4) (audit 26)."""
    r = math.floor(radius_px + 1e-9)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius_px**2 + 1e-9
    return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int64)


def gaussian_kernels(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled Gaussian and its second derivative, normalised exactly as scipy.ndimage does."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x**2 / sigma**2)
    phi /= phi.sum()
    return phi, phi * (x**2 / sigma**4 - 1.0 / sigma**2)
