"""What the likelihood stage is given: frames and vacuum levels checked, shaped, masked on the device path.

Why a module of its own: the stage was silent about bad input. One NaN raw pixel made the estimated
vacuum level NaN, and the frame scored 0 of 81 columns; one NaN denoised pixel lost 36 of 81 columns;
a Python float as the vacuum level raised ``'float' object has no attribute 'to'``, and a vacuum level
per frame of the wrong length raised torch's expand error. Two rules, because the callers differ:

* the public entry points (``LikelihoodStage.__call__``, ``likelihood_map``, ``detect_columns``,
  ``estimate_vacuum``) refuse non-finite pixels with a ``ValueError`` naming the input and the count
  (``check_finite``), unless asked to mask them;
* the batch stage's device path (``LikelihoodStage.compute``) must never stop the service and cannot
  look at the data without a host sync, so it masks them without a branch (``valid_pixels``): they
  carry no evidence (docs/likelihood.md, "Non-finite pixels"). The service replaces
  non-finite raw pixels where frames enter (service/edge.py), so there the mask is all true and the
  results are the unmasked ones, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

VacuumLevel = torch.Tensor | np.ndarray | float | int | list[float] | tuple[float, ...]
"""One vacuum level for every frame (a float or a 0-D tensor) or one per frame, counts per pixel."""


def as_tensor(x: Any) -> torch.Tensor:
    """A torch tensor as given (no copy), or an array-like (NumPy array, memmap, list) as a tensor."""
    if isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.kind not in "fiub" or a.dtype == np.uint64:
        a = a.astype(np.float32)
    elif a.dtype == np.uint32:  # no uint32 arithmetic in torch on every device
        a = a.astype(np.int64)
    a = np.ascontiguousarray(a)
    return torch.as_tensor(a if a.flags.writeable else a.copy())  # torch warns on read-only memory


def as_frames(raw: Any, denoised: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) raw and denoised frames of one shape; a single (H, W) frame becomes a batch of one."""
    raw, denoised = as_tensor(raw), as_tensor(denoised)
    if raw.shape != denoised.shape:
        raise ValueError(f"raw {tuple(raw.shape)} and denoised {tuple(denoised.shape)} differ")
    if denoised.ndim == 2:
        raw, denoised = raw[None], denoised[None]
    if denoised.ndim != 3:
        raise ValueError(f"expected (B, H, W) frames, got {tuple(denoised.shape)}")
    return raw, denoised


def check_finite(**frames: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first input with NaN / Inf pixels and how many (a host sync)."""
    for name, t in frames.items():
        if not t.is_floating_point():
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(
                f"{name} has {bad} non-finite (NaN or Inf) pixel{'s' if bad > 1 else ''} of {t.numel()}: "
                "replace them (the service uses the frame's mean of its finite pixels) or pass "
                "nonfinite='mask' to score without them (docs/likelihood.md, 'Non-finite pixels')"
            )


def vacuum_levels(vacuum: VacuumLevel, frames: int, device: torch.device, min_rate: float) -> torch.Tensor:
    """(frames,) float32 vacuum levels floored at ``min_rate``; a non-finite level stays NaN (scores nothing).

    One level (a float, a 0-D or 1-element tensor) serves every frame; otherwise one per frame.
    """
    v = vacuum if isinstance(vacuum, torch.Tensor) else torch.as_tensor(np.asarray(vacuum, np.float32))
    v = v.to(device, torch.float32).reshape(-1)
    if v.numel() == 1:
        v = v.expand(frames)
    elif v.numel() != frames:
        raise ValueError(
            f"vacuum has {v.numel()} levels for {frames} frame{'s' if frames > 1 else ''}: "
            "give one level (a float) or one per frame"
        )
    v = v.contiguous()
    return torch.where(torch.isfinite(v), v.clamp_min(min_rate), torch.full_like(v, math.nan))


def check_vacuum(vacuum: torch.Tensor) -> None:
    """Raise ``ValueError`` when a given vacuum level is NaN or infinite (a host sync)."""
    bad = int((~torch.isfinite(vacuum)).sum())
    if bad:
        raise ValueError(f"vacuum has {bad} non-finite level{'s' if bad > 1 else ''}: {vacuum.tolist()}")


def valid_pixels(raw: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels finite in both frames, with no host sync.

    ``x * 0 == 0`` exactly when x is finite (NaN and +-Inf give NaN), and counts cannot overflow a
    float sum; on CPU this is ~3x faster than ``torch.isfinite``, and it runs on every live frame.
    """
    s = raw + denoised if raw.is_floating_point() else denoised.clone()
    return s.mul_(0) == 0
