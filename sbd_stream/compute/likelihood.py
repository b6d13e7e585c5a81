"""Poisson likelihood-ratio maps: how strongly the raw counts support each detected atomic column.

Paper Sec. 3.3: a column found in the denoised image may be an artefact of the network. For a column
region R (a disk of radius ``column_radius_A`` around the detected centre) we compare two hypotheses
for the *raw* counts y_i, i in R, both with a constant Poisson rate over R:

* (1) the column is there: rate lam1 = mean of the denoised frame over R;
* (2) it is an artefact, R is vacuum: rate lam0 = the vacuum level.

With k = sum_R y_i and n = |R| the log-likelihood ratio is (the log y_i! terms cancel)

    LLR = k log(lam1 / lam0) - n (lam1 - lam0).

It is the *sum* over the region (as in the paper's product over i in R): a larger region is more
evidence; positive: the data prefer "column", negative: "vacuum"; dark columns (lam1 < lam0) work as
bright ones. Everything is in counts per pixel, the denoised frame in the raw frame's units.

The fast path is a few device kernels whatever the number of columns (separable Gaussians for the LoG,
a max-pool for maxima, one gather of the disk pixels, two scatter-reduces to paint the map);
``tests/likelihood_reference.py`` is the slow, explicit version the tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sbd_stream.compute.likelihood_config import (
    MAX_PX,
    PIXEL_RANGE_A,
    ColumnModel,
    ColumnPolarity,
    LikelihoodConfig,
    VacuumMode,
    disk_offsets,
    gaussian_kernels,
)
from sbd_stream.compute.likelihood_filters import (
    banded,
    first_of_ties,
    log_banded,
    pinned,
    square_max,
)
from sbd_stream.compute.likelihood_inputs import (
    VacuumLevel,
    as_frames,
    check_finite,
    check_vacuum,
    vacuum_levels,
    valid_pixels,
)
from sbd_stream.compute.vacuum import calibration, vacuum_blocks

__all__ = [
    "MAX_PX", "PIXEL_RANGE_A", "ColumnModel", "ColumnPolarity", "DeviceColumns", "FrameColumns",
    "LikelihoodConfig", "LikelihoodResult", "LikelihoodStage", "VacuumMode", "detect_columns",
    "disk_offsets", "estimate_vacuum", "gaussian_kernels", "likelihood_map",
]  # fmt: skip


@dataclass
class FrameColumns:
    """Detected columns of one frame: what subscribers get beside the map."""

    positions: torch.Tensor  # (K, 2) float32 [row, col] in pixels
    llr: torch.Tensor  # (K,) float32 log-likelihood ratio, column vs vacuum
    region_mean: torch.Tensor  # (K,) float32 lam1: mean denoised counts over R
    raw_sum: torch.Tensor  # (K,) float32 k: raw counts over R
    n_pixels: torch.Tensor  # (K,) float32 n: pixels of R inside the frame

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def as_array(self) -> np.ndarray:
        """(K, 4) float32 [row, col, llr, region_mean]: a flat table for the wire and the recorder."""
        cols = [self.positions[:, 0], self.positions[:, 1], self.llr, self.region_mean]
        return torch.stack(cols, dim=1).detach().to("cpu", torch.float32).numpy()


@dataclass
class LikelihoodResult:
    map: torch.Tensor  # (B, H, W) float32; LLR painted over each region, 0 elsewhere
    columns: list[FrameColumns]
    vacuum: torch.Tensor  # (B,) float32 lam0 used per frame, counts/pixel


class LikelihoodStage:
    """Holds the device-resident kernels so the live pipeline pays only for the convolutions."""

    def __init__(
        self, cfg: LikelihoodConfig, device: str | torch.device = "cpu", cpu_threads: int | None = 1
    ):
        """``cpu_threads``: torch intra-op threads while a CPU stage runs (None: leave torch's setting)."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        g, g2 = gaussian_kernels(cfg.sigma_px, cfg.kernel_radius_px)
        self._g = torch.tensor(g, dtype=torch.float32, device=self.device)
        self._g2 = torch.tensor(g2, dtype=torch.float32, device=self.device)
        off = disk_offsets(cfg.radius_px)
        self._off = torch.tensor(off, dtype=torch.long, device=self.device)  # (P, 2)
        self._off_d2 = (self._off**2).sum(1).to(torch.float32)  # (P,) squared distance, for painting
        # CPU: banded GEMMs (likelihood_filters); CUDA: cuDNN convolutions, already fast there
        self._banded = self.device.type == "cpu"
        if self._banded:
            self._g_band, self._g2_band = banded([g]), banded([g2])

    # -- vacuum -------------------------------------------------------------------------------------------
    @pinned
    def vacuum(self, raw: torch.Tensor, denoised: torch.Tensor, masked: bool = False) -> torch.Tensor:
        """lam0 per frame (B,), counts/pixel: the fixed level, or the estimator of ``compute/vacuum.py``.

        Estimated: the mean *raw* count over the ``vacuum_fraction`` of ``vacuum_block_A`` blocks with the
        lowest variance of the denoised frame (the paper: "the average intensity of the noisy pixels
        identified as belonging to the vacuum region"). It needs that fraction of *whole blocks* in
        vacuum; for frames without vacuum use ``vacuum_mode=fixed``. ``masked``: see ``vacuum_blocks``.
        """
        cfg = self.cfg
        if cfg.vacuum_mode is VacuumMode.fixed:
            assert cfg.vacuum_counts is not None  # LikelihoodConfig refuses fixed without it
            b = denoised.shape[0]
            return torch.full((b,), float(cfg.vacuum_counts), dtype=torch.float32, device=denoised.device)
        return vacuum_blocks(cfg, [raw], denoised, masked).levels[0]

    # -- detection ----------------------------------------------------------------------------------------
    @pinned
    def response(self, denoised: torch.Tensor, vacuum: torch.Tensor) -> torch.Tensor:
        """Scale-normalised LoG, sign-flipped so columns are maxima, in units of the vacuum level."""
        r = self.cfg.kernel_radius_px
        x = F.pad(denoised.to(torch.float32)[:, None], (r, r, r, r), mode="reflect")
        if self._banded:
            log = log_banded(x[:, 0], self._g_band, self._g2_band, r)
        else:
            gw, g2w = self._g.view(1, 1, 1, -1), self._g2.view(1, 1, 1, -1)
            gh, g2h = self._g.view(1, 1, -1, 1), self._g2.view(1, 1, -1, 1)
            log = (F.conv2d(F.conv2d(x, g2w), gh) + F.conv2d(F.conv2d(x, gw), g2h))[:, 0]
        sign = -1.0 if self.cfg.polarity is ColumnPolarity.bright else 1.0
        return (sign * self.cfg.sigma_px**2) * log / vacuum.view(-1, 1, 1)

    @pinned
    def detect(
        self, denoised: torch.Tensor, vacuum: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 3) long [frame, row, col] of all columns in the batch, row-major within a frame.

        A column is a pixel whose response is the maximum of its (2 m + 1)^2 neighbourhood (m =
        min_distance_px; pixels outside the frame do not compete) and exceeds ``threshold``. Of exact
        ties within a neighbourhood (a plateau) only the first in row-major order counts, so columns are
        more than m pixels apart: at most one per m x m block. No column is centred on an invalid pixel.
        """
        resp = self.response(denoised, vacuum)
        m = self.cfg.min_distance_px
        peaks = (resp == square_max(resp, m, -math.inf)) & (resp > self.cfg.threshold)
        if valid is not None:
            peaks &= valid
        return first_of_ties(peaks, m)

    # -- likelihood ---------------------------------------------------------------------------------------
    def region_sums(
        self,
        raw: torch.Tensor,
        denoised: torch.Tensor,
        centres: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, sum of denoised, n) over the disk at every centre; disk pixels outside the frame are left out.

        Equivalent to convolving raw, denoised and a ones-frame with the disk (zero padding) and reading
        the three at the centres, but gathers only the K x |R| pixels that matter (clamped indices,
        outside pixels weighted 0). Invalid pixels (``valid`` False) are left out as outside ones are.
        """
        h, w = denoised.shape[1:]
        flat, inside = self._disk_index(centres, h, w, valid)
        zero = torch.zeros((), dtype=torch.float32, device=flat.device)
        k = torch.where(inside, raw.to(torch.float32).reshape(-1)[flat], zero).sum(1)
        s = torch.where(inside, denoised.to(torch.float32).reshape(-1)[flat], zero).sum(1)
        return k, s, inside.to(torch.float32).sum(1)

    def _disk_index(
        self, centres: torch.Tensor, h: int, w: int, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P) flat indices of each disk pixel (clamped into the frame) and whether it counts."""
        ry = centres[:, 1:2] + self._off[:, 0]
        cx = centres[:, 2:3] + self._off[:, 1]
        inside = (ry >= 0) & (ry < h) & (cx >= 0) & (cx < w)
        flat = centres[:, 0:1] * (h * w) + ry.clamp(0, h - 1) * w + cx.clamp(0, w - 1)
        if valid is not None:
            inside &= valid.reshape(-1)[flat]
        return flat, inside

    @pinned
    def llr(
        self,
        raw: torch.Tensor,
        denoised: torch.Tensor,
        centres: torch.Tensor,
        vacuum: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(llr, lam1, k, n) at integer centres (N, 3) [frame, row, col]; any position works (e.g. truth)."""
        k, s, n = self.region_sums(raw, denoised, centres, valid)
        lam1 = (s / n.clamp_min(1)).clamp_min(self.cfg.min_rate)
        lam0 = vacuum[centres[:, 0]]
        if self.cfg.column_model is ColumnModel.pattern:
            return self._pattern_llr(raw, denoised, centres, lam0, valid), lam1, k, n
        return k * torch.log(lam1 / lam0) - n * (lam1 - lam0), lam1, k, n

    def _pattern_llr(
        self,
        raw: torch.Tensor,
        denoised: torch.Tensor,
        centres: torch.Tensor,
        lam0: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sum_R [y_i log(x_i / lam0) - (x_i - lam0)]: Poisson LLR of the denoised pixels x_i against vacuum.

        Why: a column near a contrast reversal can have a mean over R close to vacuum (constant LLR ~ 0)
        while its pixels are not. Meant for counts the denoiser did not see (docs/likelihood.md).
        """
        h, w = denoised.shape[1:]
        flat, inside = self._disk_index(centres, h, w, valid)
        y = raw.to(torch.float32).reshape(-1)[flat]
        x = denoised.to(torch.float32).reshape(-1)[flat].clamp_min(self.cfg.min_rate)
        l0 = lam0[:, None]
        terms = y * torch.log(x / l0) - (x - l0)
        return torch.where(inside, terms, torch.zeros((), dtype=terms.dtype, device=terms.device)).sum(1)

    @pinned
    def paint(
        self,
        shape: tuple[int, ...],  # (B, H, W), e.g. ``tuple(frames.shape)``
        centres: torch.Tensor,
        values: torch.Tensor,
        limit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Paint each disk with its column's value; ``limit`` (K,): a smaller squared radius per column, px^2.

        ``limit`` lets one pass paint columns scored over two radii (the batch stage's frames with and
        without evidence frames); a disk cut to it is the disk ``disk_offsets`` gives for that radius.

        Overlap rule: a pixel takes the value of the column whose centre is nearest (squared integer
        distance); equally near columns give the lowest value (conservative: doubt wins). Pixels in no
        region are 0, i.e. no evidence either way.
        """
        b, h, w = shape
        dev = values.device
        if centres.shape[0] == 0:
            return torch.zeros(shape, dtype=torch.float32, device=dev)
        ry = centres[:, 1:2] + self._off[:, 0]
        cx = centres[:, 2:3] + self._off[:, 1]
        inside = (ry >= 0) & (ry < h) & (cx >= 0) & (cx < w)
        if limit is not None:
            inside &= self._off_d2 <= limit[:, None] + 1e-6
        flat = (centres[:, 0:1] * (h * w) + ry * w + cx)[inside]
        d2 = self._off_d2.expand_as(ry)[inside]  # small integers, exact in float32
        val = values[:, None].expand_as(ry)[inside].to(torch.float32)
        best = torch.full((b * h * w,), math.inf, dtype=torch.float32, device=dev)
        best.scatter_reduce_(0, flat, d2, reduce="amin")
        win = d2 == best[flat]
        low = torch.full((b * h * w,), math.inf, dtype=torch.float32, device=dev)
        low.scatter_reduce_(0, flat[win], val[win], reduce="amin")
        out = torch.where(torch.isinf(best), torch.zeros((), device=dev), low)
        return out.view(b, h, w)

    def min_side(self, vacuum_given: bool = False) -> int:
        """Smallest side scored (working px): kernel radius + 1 to mirror-pad, a block to estimate vacuum."""
        est = not vacuum_given and self.cfg.vacuum_mode is VacuumMode.estimate
        return max(self.cfg.kernel_radius_px + 1, self.cfg.vacuum_block_px if est else 0)

    @torch.no_grad()
    @pinned
    def compute(
        self, raw: torch.Tensor, denoised: torch.Tensor, vacuum: VacuumLevel | None = None
    ) -> DeviceColumns:
        """Everything on the device, no host copies: the batch stage downloads it once with the rest.

        Raw and denoised frames (B, H, W), counts per pixel. ``vacuum`` (one level, or one per frame)
        overrides lam0 (e.g. a level tracked over the acquisition), floored at ``min_rate``; else see
        ``vacuum``. Never raises on values: a pixel non-finite in either frame carries no evidence (left
        out of every k and n, its block is not vacuum, no column is centred on it; the LoG reads it as
        the vacuum level), and a frame whose vacuum level is not finite scores no columns. Frames
        without such pixels give the unmasked results bit for bit; the mask adds no host sync.
        """
        raw, denoised = as_frames(raw, denoised)
        need = self.min_side(vacuum is not None)
        if min(denoised.shape[1:]) < need:
            raise ValueError(f"frames must be at least {need} pixels on a side for these parameters")
        raw = raw.to(self.device)
        denoised = denoised.to(self.device, torch.float32)
        valid = valid_pixels(raw, denoised)
        if vacuum is None and self.cfg.vacuum_mode is not VacuumMode.fixed:  # estimated: and calibrated
            est = vacuum_blocks(self.cfg, [raw, denoised], denoised, masked=True)
            lam0 = est.levels[0]
            denoised = denoised * calibration(lam0, est.levels[1]).view(-1, 1, 1)  # vacuum.calibration
        elif vacuum is None:
            lam0 = self.vacuum(raw, denoised, masked=True)
        else:
            lam0 = vacuum_levels(vacuum, denoised.shape[0], self.device, self.cfg.min_rate)
        denoised = torch.where(valid, denoised, lam0.view(-1, 1, 1))
        centres = self.detect(denoised, lam0, valid)
        llr, lam1, k, n = self.llr(raw, denoised, centres, lam0, valid)
        llr_map = self.paint(tuple(denoised.shape), centres, llr)
        return DeviceColumns(llr_map, centres, llr, lam1, k, n, lam0)

    def __call__(
        self,
        raw: torch.Tensor | np.ndarray,
        denoised: torch.Tensor | np.ndarray,
        vacuum: VacuumLevel | None = None,
        *,
        nonfinite: Literal["raise", "mask"] = "raise",
    ) -> LikelihoodResult:
        """``compute``, with the columns split per frame (one small host copy for the split).

        Frames: torch tensors or array-likes, (H, W) or (B, H, W). A non-finite vacuum level is a
        ``ValueError``; so is a NaN / Inf pixel unless ``nonfinite="mask"`` (``compute``'s rule).
        """
        raw, denoised = as_frames(raw, denoised)
        if nonfinite == "raise":
            check_finite(raw=raw, denoised=denoised)
        elif nonfinite != "mask":
            raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nonfinite!r}")
        if vacuum is not None:
            vacuum = vacuum_levels(vacuum, denoised.shape[0], self.device, self.cfg.min_rate)
            check_vacuum(vacuum)
        d = self.compute(raw, denoised, vacuum)
        counts = torch.bincount(d.centres[:, 0], minlength=d.map.shape[0]).tolist()
        pos = d.centres[:, 1:].to(torch.float32)
        columns = [
            FrameColumns(*parts)
            for parts in zip(*(t.split(counts) for t in (pos, d.llr, d.lam1, d.k, d.n)), strict=True)
        ]
        return LikelihoodResult(map=d.map, columns=columns, vacuum=d.lam0)


@dataclass
class DeviceColumns:
    """All frames' maps and columns as device tensors; ``centres`` rows are [frame, row, col]."""

    map: torch.Tensor  # (B, H, W) float32
    centres: torch.Tensor  # (K, 3) long
    llr: torch.Tensor  # (K,)
    lam1: torch.Tensor  # (K,) region mean of the denoised frame, counts/pixel
    k: torch.Tensor  # (K,) raw counts over the region
    n: torch.Tensor  # (K,) region pixels inside the frame
    lam0: torch.Tensor  # (B,) vacuum rate, counts/pixel


def estimate_vacuum(raw: Any, denoised: Any, cfg: LikelihoodConfig) -> torch.Tensor:
    """lam0 per frame (B,) in counts/pixel; see ``LikelihoodStage.vacuum`` for the estimator."""
    raw, denoised = as_frames(raw, denoised)
    check_finite(raw=raw, denoised=denoised)
    return LikelihoodStage(cfg, denoised.device).vacuum(raw, denoised)


def detect_columns(
    denoised: Any, cfg: LikelihoodConfig, vacuum: VacuumLevel | None = None
) -> list[torch.Tensor]:
    """Column centres per frame, each (K, 2) float32 [row, col] in pixels.

    Without ``vacuum`` the response is scaled by the frame's vacuum estimated from the denoised frame
    itself (or the fixed value), so ``threshold`` stays in units of the vacuum level.
    """
    d, _ = as_frames(denoised, denoised)
    check_finite(denoised=d)
    stage = LikelihoodStage(cfg, d.device)
    d = d.to(torch.float32)
    if vacuum is None:
        lam0 = stage.vacuum(d, d)
    else:
        lam0 = vacuum_levels(vacuum, d.shape[0], d.device, cfg.min_rate)
        check_vacuum(lam0)
    c = stage.detect(d, lam0)
    counts = torch.bincount(c[:, 0], minlength=d.shape[0]).tolist()
    return list(c[:, 1:].to(torch.float32).split(counts))


def likelihood_map(
    raw: Any,
    denoised: Any,
    cfg: LikelihoodConfig,
    vacuum: VacuumLevel | None = None,
    *,
    nonfinite: Literal["raise", "mask"] = "raise",
) -> LikelihoodResult:
    """One-shot convenience; the live pipeline keeps a ``LikelihoodStage`` instead."""
    raw, denoised = as_frames(raw, denoised)
    return LikelihoodStage(cfg, denoised.device)(raw, denoised, vacuum, nonfinite=nonfinite)
