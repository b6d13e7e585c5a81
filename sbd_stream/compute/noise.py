"""Detector noise model shared by training, the emulator and the tests.

A counting detector reports an integer number of electrons per pixel; for independent electrons that
number is Poisson distributed around the clean intensity. Keeping one implementation here means the
network is trained on exactly the noise the service will see.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_DOSE = 0.45
"""Expected counts per pixel in vacuum for one 25 ms frame (paper Sec. 2)."""


def expected_counts(clean: np.ndarray | torch.Tensor, dose: float) -> np.ndarray | torch.Tensor:
    """Map a clean image normalised to vacuum = 1 onto the expected counts per pixel at ``dose``."""
    if dose <= 0:
        raise ValueError(f"dose must be positive, got {dose}")
    return clean * dose


def poisson_counts(
    clean: np.ndarray, dose: float, rng: np.random.Generator, dtype: np.dtype | type = np.uint16
) -> np.ndarray:
    """Draw one counted frame: Poisson counts around ``clean * dose`` (clean normalised to vacuum = 1).

    An integer ``dtype`` saturates at its largest value, as a detector's counter does: with ``np.uint8``
    every pixel above 255 counts reads 255, without a warning. Pick a dtype wide enough for the dose
    (uint16, the default, holds 65535 counts per pixel).
    """
    lam = np.clip(np.asarray(expected_counts(clean, dose), dtype=np.float64), 0.0, None)
    counts = rng.poisson(lam)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    if info is not None:
        counts = np.clip(counts, 0, info.max)
    return counts.astype(dtype)


def poisson_counts_torch(
    clean: torch.Tensor, dose: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fresh Poisson noise for a training batch, on whatever device ``clean`` lives.

    ``dose`` may be a tensor broadcastable to ``clean`` so each sample of a batch can have its own dose.
    """
    lam = torch.clamp(clean * dose, min=0.0)
    return torch.poisson(lam, generator=generator)
