"""The vacuum estimator of the likelihood stage, and whether the blocks it took as vacuum look like vacuum.

Estimator (``LikelihoodStage.vacuum`` calls it): vacuum is the background away from the specimen, which is
*flat* whatever the defocus (columns can be dark or bright, so "the brightest" or "the darkest" level is
not vacuum). The frame is cut into square blocks of ``vacuum_block_A`` (a remainder strip at the bottom
and right is ignored); the ``vacuum_fraction`` of blocks with the lowest variance of the denoised frame
are vacuum, and lam0 is the mean *raw* count over them, as in the paper.

Why the flatness check: the estimator needs ``vacuum_fraction`` of whole blocks in vacuum, not of pixels.
Below that it silently takes flat specimen as vacuum (audit 24, a 256^2 frame at 0.24 A: 3 % high at
10-12 % vacuum, 20 % high at 0-7 %), and a level 20 % off reverses the LLR's verdict while staying
inside the dose check's 0.8-1.25x window. Two statistics of the chosen blocks tell, at no extra pass:

* ``spread``: the variance of the chosen blocks' mean raw counts over its Poisson value (level / pixels
  per block): ~1 when all are vacuum (0.6-1.4 measured), 9-24 when vacuum and specimen blocks mix (7-12 %
  vacuum). It assumes Poisson counts, which a counting detector's binned sums are.
* ``rough``: the chosen blocks' mean variance of the *denoised* frame over the level: below 1e-4 for the
  shipped engines in vacuum, ~0.015 on flat specimen (0-3 % vacuum). It depends on the engine: one that
  leaves noise in vacuum (a blur leaves ~1/(4 pi sigma^2) of it) reads as rough everywhere.

A frame is "not flat" when either passes its bound (``SPREAD_MAX``, ``ROUGH_MAX``); docs/likelihood.md
gives the measured table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sbd_stream.compute.likelihood_config import LikelihoodConfig
from sbd_stream.compute.likelihood_filters import blocks

SPREAD_MAX = 4.0
"""Chosen blocks whose means scatter over 4x their Poisson variance are not all vacuum (measured 0.6-1.4
in vacuum with the shipped engine, 9-24 at 7-12 % vacuum)."""
ROUGH_MAX = 0.005
"""Chosen blocks whose denoised variance passes 0.5 % of the Poisson variance are not flat (shipped engines:
< 0.01 % in vacuum, ~1.5 % on flat specimen)."""


@dataclass
class VacuumBlocks:
    """The estimator's result: a level per raw stack given, and the flatness of the blocks chosen."""

    levels: list[torch.Tensor]  # per raw stack: (B,) mean raw count over the chosen blocks, >= min_rate
    spread: torch.Tensor  # (B,) variance of the first stack's chosen block means / Poisson (NaN: < 2 blocks)
    rough: torch.Tensor  # (B,) chosen blocks' mean denoised variance / the first level

    @property
    def not_flat(self) -> torch.Tensor:
        """(B,) bool: the chosen blocks do not look like vacuum (NaN statistics do not count)."""
        return (self.spread > SPREAD_MAX) | (self.rough > ROUGH_MAX)


def vacuum_blocks(
    cfg: LikelihoodConfig, raws: Sequence[torch.Tensor], denoised: torch.Tensor, masked: bool = False
) -> VacuumBlocks:
    """lam0 per frame of each of ``raws`` (B, H, W), all over the blocks chosen on ``denoised``.

    Several raw stacks share one choice: the batch stage estimates a frame's own level and the level of
    the evidence frames summed for it on the same blocks (the denoised variance ranks them; scaling the
    denoised frame does not change the ranking). The statistics refer to ``raws[0]``.

    ``masked`` (``LikelihoodStage.compute``'s rule): a block holding a non-finite pixel is never vacuum
    (told from the block's own variance and mean: no pass over the pixels); a frame with no finite block
    of both frames takes the mean of its blocks with finite raw counts, and with none scores nothing (NaN).
    """
    s = cfg.vacuum_block_px
    nh, nw = denoised.shape[1] // s, denoised.shape[2] // s
    var = blocks(denoised.to(torch.float32), s, nh, nw).var(dim=2, correction=0)  # (B, nh * nw)
    means = [blocks(r.to(torch.float32), s, nh, nw).mean(dim=2) for r in raws]
    ok = torch.isfinite(var)
    if masked:
        ok = ok & torch.isfinite(means[0])
        var = torch.where(ok, var, torch.full_like(var, math.inf))
    k = max(1, int(cfg.vacuum_fraction * var.shape[1]))
    thr = var.kthvalue(k, dim=1, keepdim=True).values
    levels = []
    if not masked:
        mask = (var <= thr).to(torch.float32)
        picked = mask > 0
        for bm in means:
            levels.append(((bm * mask).sum(1) / mask.sum(1)).clamp_min(cfg.min_rate))
    else:
        picked = (var <= thr) & ok
        for bm in means:
            finite = torch.isfinite(bm)
            zero = torch.zeros_like(bm)
            lam0 = torch.where(picked, bm, zero).sum(1) / picked.sum(1).clamp_min(1)
            fallback = torch.where(finite, bm, zero).sum(1) / finite.sum(1)  # 0 / 0: NaN
            levels.append(torch.where(picked.any(1), lam0, fallback).clamp_min(cfg.min_rate))
    spread, rough = _flatness(means[0], var, picked, levels[0], s * s)
    return VacuumBlocks(levels, spread, rough)


def _flatness(
    block_mean: torch.Tensor, var: torch.Tensor, picked: torch.Tensor, level: torch.Tensor, pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(spread, rough) of the chosen blocks (see the module docstring); NaN where undefined."""
    zero = torch.zeros_like(block_mean)
    n = picked.sum(1).to(torch.float32)
    m = torch.where(picked, block_mean, zero).sum(1) / n.clamp_min(1)
    dev2 = torch.where(picked, (block_mean - m[:, None]) ** 2, zero).sum(1)
    between = dev2 / (n - 1).clamp_min(1)
    nan = torch.full_like(m, math.nan)
    spread = torch.where((n >= 2) & (m > 0), between * pixels / m.clamp_min(1e-30), nan)
    rough = torch.where(picked, var, zero).sum(1) / n.clamp_min(1) / level
    return spread, torch.where(n >= 1, rough, nan)
