"""The vacuum estimator of the likelihood stage, and whether the blocks it took as vacuum look like vacuum.

Estimator (``LikelihoodStage.vacuum`` calls it): vacuum is the background away from the specimen, which is
*flat* whatever the defocus (columns can be dark or bright, so "the brightest" or "the darkest" level is
not vacuum). The frame is cut into square blocks of ``vacuum_block_A`` (a remainder strip at the bottom
and right is ignored); the ``vacuum_fraction`` of blocks with the lowest variance of the denoised frame
are vacuum, and lam0 is the mean *raw* count over them, as in the paper.

Why the flatness check: the estimator needs ``vacuum_fraction`` of whole blocks in vacuum, not of pixels.
Below that it silently takes flat specimen as vacuum (audit 24, a 256^2 frame at 0.24 A: 3 % high at
10-12 % vacuum, 20 % high at 0-7 %), and a level 20 % off reverses the LLR's verdict while staying
inside the dose check's 0.8-1.25x window. Four statistics of the chosen blocks, three of their *raw*
counts, each scaled by the frame's own level (the chosen blocks' mean) and divided by the value Poisson
vacuum passes with probability 1e-5 for the frame's own number of chosen blocks and pixels (``Z``), so
> 1 flags, whatever the dose:

* ``spread``: the variance of the chosen blocks' means over its Poisson value (level / pixels per block),
  a chi-square of (blocks - 1) dof in vacuum: large when vacuum and specimen blocks mix. Until audit 24
  defect 5 the bound was a fixed 4: over 2-3 chosen blocks (a 512^2 frame) a 1-2 dof chi-square passes
  it in 2-5 % of ordinary frames at the right dose (measured 2 of 80).
* ``grain``: the chosen blocks' pixel variance over the level (chi-square of their pixels' dof).
* ``texture``: the chosen blocks' mean product of adjacent pixels' deviations over the level (~normal,
  sd 1 / sqrt(pairs)): columns are wider than a pixel, Poisson counts are independent.

and ``rough``, the chosen blocks' mean variance of the *denoised* frame over the level, flagged above
``ROUGH_MAX``: < 1e-4 in vacuum at the engine's dose, 0.007-0.05 on flat specimen. It is the only one
that sees a weak flat specimen taken for vacuum (a 1024^2 frame with 0-3 % vacuum, level 17-21 % high:
raw statistics 0.3-0.9 of their bounds, ``rough`` 0.007-0.008); but the engine denoises at the
*configured* dose and leaves vacuum flat only there: 0.001-0.005 in inner vacuum blocks at 0.5-2x,
0.005-0.04 in vacuum blocks at a frame's edge, as much as flat specimen at 1x, so no bound on it scaled
by the frame's own level separates them, and it is kept at the configured dose's bound. A frame flagged
off the dose check's band is warned about the dose, not the vacuum (``service/frame_flags.py``).
Measured with the shipped ``sbd-unet3s2-paper`` through ``BatchStage``, 320 frames per case
(docs/likelihood.md "Vacuum level"): at the configured dose 0 of 960 ordinary frames with 25-50 %
vacuum flagged (old: ~2 % of 512^2 ones); at 0.5-2x 0 of 1,280 512^2 frames half vacuum; but where the
vacuum blocks were few or at the edge, off the dose 6-100 %: the engine's output ramps at the frame's
edge off its dose, so edge vacuum ranked rough and mixed blocks were taken (level 4-8 % high). The
denoised variance now leaves out the frame's border (``BORDER_BLOCKS``): 0 of 32 such frames flagged at
0.5-2x (session 28, docs/likelihood.md). Poisson counts assumed (a counting detector's, binned).

Session 36, by engine: the live CPU engine ``sbd-unet3s2-paper-twins`` read ``rough`` 0.002-0.007 on
genuine vacuum at 0.5x and 2x (2-8 of 8-16 frames flagged); ``rough`` now counts only where ``dose`` (the
frame's level over the engine's output on the same blocks: the engine's output follows the configured
dose) is inside ``DOSE_BAND``, off which the dose check warns. No bound, per engine or not, separates
vacuum from flat specimen inside the band on the twins engines (vacuum at 0.8x up to 0.008-0.009, a weak
flat specimen at 1x from 0.0002 on the live engine): a stated limit (docs/likelihood.md), not a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sbd_stream.compute.evidence import DOSE_BAND
from sbd_stream.compute.likelihood_config import LikelihoodConfig
from sbd_stream.compute.likelihood_filters import blocks

ROUGH_MAX = 0.005
"""Chosen blocks whose denoised variance passes 0.5 % of the Poisson variance are not flat: shipped engines
< 0.01 % in vacuum at their dose, 0.7-5 % on flat specimen. Off their dose vacuum reads 0.1-4 % (module
docstring): not lowered to the frame's own level, which cannot tell the two apart; counted only inside
``DOSE_BAND`` (``VacuumBlocks.not_flat``)."""
BORDER_BLOCKS = 2 / 3
"""Pixels this fraction of a block or nearer the frame's edge do not count in a block's *denoised* variance
(its rank and ``rough``); its raw statistics use the whole block. Why: off its configured dose the engine's
output ramps over the frame's outer 12-15 px (0.24 A pixels; measured with ``sbd-unet3s2-paper``, 0.5x:
2.0 -> 1.54 of the level, 2x: 0.53 -> 0.69 -> 0.52), so every vacuum block along an edge read
``rough`` 0.04-0.05 against 0.002-0.006 inside. With the vacuum only along an edge the estimator took
specimen and mixed blocks instead and flagged genuine vacuum (1024^2 frames, two rows of vacuum blocks at
the top: 2x 4 of 4 flagged). Half a block (10 px) still left 3 of 8 flagged at 0.5x; two thirds, 0."""
Z = 4.26
"""One-sided normal quantile of a 1e-5 tail: each statistic is divided by the value Poisson vacuum passes
with that probability for the frame's own level, number of chosen blocks and pixels, so 1 is the bound."""


@dataclass
class VacuumBlocks:
    """The estimator's result: a level per raw stack given, and the flatness of the blocks chosen."""

    levels: list[torch.Tensor]  # per raw stack: (B,) mean raw count over the chosen blocks, >= min_rate
    spread: torch.Tensor  # (B,) chosen block means' scatter / its bound (NaN: < 2 blocks)
    grain: torch.Tensor  # (B,) chosen blocks' raw variance / its bound (NaN: none, or a zero level)
    texture: torch.Tensor  # (B,) chosen blocks' raw neighbour covariance / its bound (NaN: as grain)
    rough: torch.Tensor  # (B,) chosen blocks' mean denoised variance / the first level (NaN: none)
    dose: torch.Tensor | None = None  # (B,) first level / the denoised mean on the same blocks (None: n/a)

    @property
    def not_flat(self) -> torch.Tensor:
        """(B,) bool: the chosen blocks do not look like vacuum (NaN statistics do not count).

        ``rough`` counts only where ``dose`` is within ``DOSE_BAND``: the engine leaves vacuum flat only
        near its configured dose, and off the band the dose check already warns and names the dose (session
        36: the live ``sbd-unet3s2-paper-twins`` read ``rough`` 0.002-0.006 on genuine vacuum at 0.5x and
        2x, flagging 2-8 of 8-16 frames)."""
        rough = self.rough > ROUGH_MAX
        if self.dose is not None:
            rough = rough & (self.dose >= DOSE_BAND[0]) & (self.dose <= DOSE_BAND[1])
        return self.raw_not_flat | rough

    @property
    def raw_not_flat(self) -> torch.Tensor:
        """(B,) bool: the chosen blocks' *raw counts* do not look like vacuum (``rough`` left out).

        Why (the offline dose check, ``service/offline_dose.py``): ``rough`` is measured on the engine's
        output, which leaves vacuum flat only at the configured dose; stated at 2x it read 0.02 on half
        vacuum frames, so ``not_flat`` marked exactly the frames whose dose is wrong. The raw statistics
        do not depend on the dose stated; a weak flat specimen they pass reads at most ~20 % high, inside
        the dose check's band."""
        return (self.spread > 1) | (self.grain > 1) | (self.texture > 1)


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
    keep = _off_border(denoised, s, nh, nw)
    den_blocks = blocks(denoised.to(torch.float32), s, nh, nw)  # once: the rank, rough and the dose proxy
    var = _var_over(den_blocks, keep)  # (B, nh * nw)
    first = blocks(raws[0].to(torch.float32), s, nh, nw)
    raw_var, first_mean = torch.var_mean(first, dim=2, correction=1)
    means = [first_mean, *(blocks(r.to(torch.float32), s, nh, nw).mean(dim=2) for r in raws[1:])]
    cov, pairs = _neighbour_cov(first, first_mean, s)
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
    n = picked.sum(1)
    rough = torch.where(picked, var, torch.zeros_like(var)).sum(1) / n.clamp_min(1) / levels[0]
    rough = torch.where(n > 0, rough, torch.full_like(rough, math.nan))
    den_mean = den_blocks.mean(dim=2)
    den_level = torch.where(picked, den_mean, torch.zeros_like(den_mean)).sum(1) / n.clamp_min(1)
    dose = levels[0] / den_level  # the engine's output follows the configured dose: ~measured / configured
    flat = _flatness(means[0], raw_var, cov, picked, s * s, pairs)
    return VacuumBlocks(levels, *flat, rough, torch.where(n > 0, dose, torch.full_like(dose, math.nan)))


def _off_border(denoised: torch.Tensor, s: int, nh: int, nw: int) -> torch.Tensor:
    """(1, nh * nw, s * s) 1 for the pixels of each block farther than ``BORDER_BLOCKS`` of a block from the
    frame's edge, else 0: a block keeps at least a third of its rows and columns, and a frame too small
    for any (under 1 2/3 blocks a side) keeps all of its pixels, as before."""
    h, w = denoised.shape[1:]
    m = int(BORDER_BLOCKS * s)
    keep = torch.zeros((1, h, w), dtype=torch.float32, device=denoised.device)
    keep[:, m : h - m, m : w - m] = 1
    keep = blocks(keep, s, nh, nw)
    return torch.where(keep.sum(2, keepdim=True) > 0, keep, torch.ones_like(keep))


def _var_over(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, nb) variance of each (B, nb, s * s) block over its pixels where ``keep`` is 1; a non-finite
    pixel anywhere in the block still makes it non-finite (NaN * 0), as the masked rule needs."""
    n = keep.sum(2)
    mean = (x * keep).sum(2) / n
    return (((x - mean[..., None]) * keep) ** 2).sum(2) / n


def _neighbour_cov(x: torch.Tensor, mean: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
    """(B, nb) mean product of the deviations of horizontally and vertically adjacent pixels in each
    (B, nb, s * s) block, and the number of such pairs per block: ~0 (+-level / sqrt(pairs)) for
    independent Poisson counts, the structure's covariance at one pixel where there is structure."""
    d = (x - mean[..., None]).reshape(*x.shape[:2], s, s)
    h = (d[..., :, 1:] * d[..., :, :-1]).sum((2, 3))
    v = (d[..., 1:, :] * d[..., :-1, :]).sum((2, 3))
    pairs = 2 * s * (s - 1)
    return (h + v) / pairs, pairs


def _flatness(
    block_mean: torch.Tensor,
    raw_var: torch.Tensor,
    cov: torch.Tensor,
    picked: torch.Tensor,
    pixels: int,
    pairs: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(spread, grain, texture) of the chosen blocks, each over its bound (see the module docstring);
    NaN where undefined (fewer than 2 chosen blocks for ``spread``, none for the others, a zero level)."""
    zero = torch.zeros_like(block_mean)
    n = picked.sum(1).to(torch.float32)
    m = torch.where(picked, block_mean, zero).sum(1) / n.clamp_min(1)
    dev2 = torch.where(picked, (block_mean - m[:, None]) ** 2, zero).sum(1)
    between = dev2 / (n - 1).clamp_min(1)
    nan = torch.full_like(m, math.nan)
    ok = m > 0
    lvl = m.clamp_min(1e-30)
    spread = between * pixels / lvl / _chi2_bound(n - 1)
    grain = torch.where(picked, raw_var, zero).sum(1) / n.clamp_min(1) / lvl / _chi2_bound(n * (pixels - 1))
    texture = torch.where(picked, cov, zero).sum(1) / n.clamp_min(1) / lvl / (Z / torch.sqrt(n * pairs))
    one = (n >= 1) & ok
    return (
        torch.where((n >= 2) & ok, spread, nan),
        torch.where(one, grain, nan),
        torch.where(one, texture, nan),
    )


def _chi2_bound(dof: torch.Tensor) -> torch.Tensor:
    """The chi-square / dof value passed with probability ~1e-5 (Wilson-Hilferty, normal quantile ``Z``;
    at 1 dof it errs high by ~10 %, i.e. rarer still), per frame: on the device, no host sync."""
    k = dof.clamp_min(1)
    return (1 - 2 / (9 * k) + Z * torch.sqrt(2 / (9 * k))) ** 3


CALIBRATION_RANGE = (0.25, 4.0)
"""The most ``calibration`` scales the rates by: beyond it the dose is wrong by more than any engine's
trained range (0.5-2x) and the dose check says so; the factor is clamped, not trusted."""


def calibration(counts_level: torch.Tensor, rates_level: torch.Tensor) -> torch.Tensor:
    """(B,) factors that put the denoised rates in the scale of the counts scored: the counts' mean over
    the blocks taken as vacuum over the rates' mean over the same blocks (1 where either is not finite).

    Why: the engine's output follows the *configured* dose (its normalisation), while the vacuum level
    scored against is measured on the counts. A stream 10 % brighter than configured (inside the dose
    check's 0.8-1.25x window, no warning) left the columns' rates below the measured vacuum: 39 % of real
    columns scored positive instead of 95 % with 4 evidence frames, 0 % at 1.25x (audit h30, likelihood).
    Measured on the same blocks, the ratio is the denoiser's scale against the data *in vacuum*; off its
    dose the engine's specimen is off by another factor (1.25x: 5 % above the counts after this one), so
    an evidence sum is calibrated over the whole frame instead (``compute/scoring.py`` ``_frame_scale``,
    audit h30 follow-up). ``vacuum_mode = fixed`` is not calibrated: its level is the user's, stated for
    the stream.
    """
    ratio = counts_level / rates_level
    ok = torch.isfinite(ratio) & (rates_level > 0)
    return torch.where(ok, ratio, torch.ones_like(ratio)).clamp(*CALIBRATION_RANGE)
