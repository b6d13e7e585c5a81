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

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sbd_stream.compute.likelihood_filters import banded, log_banded, pinned


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


class LikelihoodConfig(BaseModel):
    """Detection and likelihood parameters, in physical units; pixel values are derived from the pixel size.

    Record ``describe()`` next to the maps: it holds both the physical and the derived pixel values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_A: float = Field(0.1, gt=0, description="sampling of the frame in Angstrom per pixel")
    column_radius_A: float = Field(0.7, gt=0, description="radius of the disk region R around a column")
    log_sigma_A: float | None = Field(
        None, gt=0, description="LoG scale; default column_radius_A / sqrt(2) (blob radius = sqrt(2) sigma)"
    )
    polarity: ColumnPolarity = ColumnPolarity.bright
    threshold: float = Field(
        0.05,
        ge=0,
        description="minimum scale-normalised LoG response, in units of the vacuum level "
        "(a Gaussian column of contrast A and width sigma gives A/2)",
    )
    min_distance_A: float = Field(1.0, gt=0, description="a column must be the LoG extremum within this")
    column_model: ColumnModel = Field(
        ColumnModel.constant, description="the LLR's alternative over R: the denoised mean or pixels"
    )
    vacuum_mode: VacuumMode = VacuumMode.estimate
    vacuum_counts: float | None = Field(None, gt=0, description="lam0 in counts/pixel when vacuum_mode=fixed")
    vacuum_fraction: float = Field(
        0.1, gt=0, le=1, description="fraction of the blocks (the flattest) taken as vacuum by the estimator"
    )
    vacuum_block_A: float = Field(
        5.0, gt=0, description="side of the estimator's square blocks; wider than the column spacing"
    )
    truncate: float = Field(4.0, gt=0, description="Gaussian kernels reach truncate * sigma (as scipy)")
    min_rate: float = Field(
        1e-6, gt=0, description="floor on lam0 and lam1, counts/pixel, to keep logs finite"
    )

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> LikelihoodConfig:
        if self.vacuum_mode is VacuumMode.fixed and self.vacuum_counts is None:
            raise ValueError("vacuum_mode=fixed needs vacuum_counts")
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
    """Integer offsets (dy, dx) with dy^2 + dx^2 <= r^2, row-major: the pixels of a region R."""
    r = math.floor(radius_px)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius_px**2 + 1e-9
    return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int64)


def gaussian_kernels(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled Gaussian and its second derivative, normalised exactly as scipy.ndimage does."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x**2 / sigma**2)
    phi /= phi.sum()
    return phi, phi * (x**2 / sigma**4 - 1.0 / sigma**2)


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
    def vacuum(self, raw: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """lam0 per frame (B,), counts/pixel.

        Estimator: vacuum is the background away from the specimen, which is *flat* whatever the defocus
        (columns can be dark or bright, so "the brightest" or "the darkest" level is not vacuum). The
        frame is cut into square blocks of ``vacuum_block_A`` (a remainder strip at the bottom and right
        is ignored); the ``vacuum_fraction`` of blocks with the lowest variance of the denoised frame are
        vacuum, and lam0 is the mean *raw* count over them, as in the paper ("the average intensity of
        the noisy pixels identified as belonging to the vacuum region"). Blocks wider than the column
        spacing keep the flat gaps between columns inside a crystal out. It assumes vacuum covers at
        least that fraction of the frame; for frames without vacuum use ``vacuum_mode=fixed``.
        """
        cfg = self.cfg
        b = denoised.shape[0]
        if cfg.vacuum_mode is VacuumMode.fixed:
            return torch.full((b,), float(cfg.vacuum_counts), dtype=torch.float32, device=denoised.device)
        s = cfg.vacuum_block_px
        nh, nw = denoised.shape[1] // s, denoised.shape[2] // s
        d = _blocks(denoised.to(torch.float32), s, nh, nw)  # (B, nh * nw, s * s)
        var = d.var(dim=2, correction=0)  # two-pass, accurate in float32
        k = max(1, int(cfg.vacuum_fraction * var.shape[1]))
        thr = var.kthvalue(k, dim=1, keepdim=True).values
        mask = (var <= thr).to(torch.float32)
        block_mean = _blocks(raw.to(torch.float32), s, nh, nw).mean(dim=2)
        lam0 = (block_mean * mask).sum(1) / mask.sum(1)
        return lam0.clamp_min(cfg.min_rate)

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
    def detect(self, denoised: torch.Tensor, vacuum: torch.Tensor) -> torch.Tensor:
        """(N, 3) long [frame, row, col] of all columns in the batch, row-major within a frame.

        A column is a pixel whose response is the maximum of its (2 m + 1)^2 neighbourhood (m =
        min_distance_px; pixels outside the frame do not compete) and exceeds ``threshold``. Exact ties
        on a plateau all count. The count is bounded by the max-pool: at most one per m x m block.
        """
        resp = self.response(denoised, vacuum)
        m = self.cfg.min_distance_px
        mx = F.pad(resp, (m, m, m, m), value=-math.inf)
        mx = _sliding_max(_sliding_max(mx, 2 * m + 1, 2), 2 * m + 1, 1)
        peaks = (resp == mx) & (resp > self.cfg.threshold)
        return peaks.nonzero()

    # -- likelihood ---------------------------------------------------------------------------------------
    def region_sums(
        self, raw: torch.Tensor, denoised: torch.Tensor, centres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, sum of denoised, n) over the disk at every centre; disk pixels outside the frame are left out.

        Equivalent to convolving raw, denoised and a ones-frame with the disk (zero padding) and reading
        the three at the centres, but gathers only the K x |R| pixels that matter (clamped indices,
        outside pixels weighted 0).
        """
        flat, inside = self._disk_index(centres, *denoised.shape[1:])
        k = (raw.to(torch.float32).reshape(-1)[flat] * inside).sum(1)
        s = (denoised.to(torch.float32).reshape(-1)[flat] * inside).sum(1)
        return k, s, inside.sum(1)

    def _disk_index(self, centres: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P) flat indices of each disk pixel (clamped into the frame) and 1 / 0: inside or not."""
        ry = centres[:, 1:2] + self._off[:, 0]
        cx = centres[:, 2:3] + self._off[:, 1]
        inside = ((ry >= 0) & (ry < h) & (cx >= 0) & (cx < w)).to(torch.float32)
        return centres[:, 0:1] * (h * w) + ry.clamp(0, h - 1) * w + cx.clamp(0, w - 1), inside

    @pinned
    def llr(
        self, raw: torch.Tensor, denoised: torch.Tensor, centres: torch.Tensor, vacuum: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(llr, lam1, k, n) at integer centres (N, 3) [frame, row, col]; any position works (e.g. truth)."""
        k, s, n = self.region_sums(raw, denoised, centres)
        lam1 = (s / n).clamp_min(self.cfg.min_rate)
        lam0 = vacuum[centres[:, 0]]
        if self.cfg.column_model is ColumnModel.pattern:
            return self._pattern_llr(raw, denoised, centres, lam0), lam1, k, n
        return k * torch.log(lam1 / lam0) - n * (lam1 - lam0), lam1, k, n

    def _pattern_llr(
        self, raw: torch.Tensor, denoised: torch.Tensor, centres: torch.Tensor, lam0: torch.Tensor
    ) -> torch.Tensor:
        """sum_R [y_i log(x_i / lam0) - (x_i - lam0)]: Poisson LLR of the denoised pixels x_i against vacuum.

        Why: a column near a contrast reversal can have a mean over R close to vacuum (constant LLR ~ 0)
        while its pixels are not. Meant for counts the denoiser did not see (docs/likelihood.md).
        """
        flat, inside = self._disk_index(centres, *denoised.shape[1:])
        y = raw.to(torch.float32).reshape(-1)[flat]
        x = denoised.to(torch.float32).reshape(-1)[flat].clamp_min(self.cfg.min_rate)
        l0 = lam0[:, None]
        return ((y * torch.log(x / l0) - (x - l0)) * inside).sum(1)

    @pinned
    def paint(self, shape: tuple[int, int, int], centres: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Paint each disk with its column's value.

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
        self, raw: torch.Tensor, denoised: torch.Tensor, vacuum: torch.Tensor | None = None
    ) -> DeviceColumns:
        """Everything on the device, no host copies: the batch stage downloads it once with the rest.

        Raw and denoised frames (B, H, W), counts per pixel. ``vacuum`` (B,) overrides lam0 (e.g. a
        level tracked over the acquisition); else see ``vacuum``.
        """
        if raw.shape != denoised.shape:
            raise ValueError(f"raw {tuple(raw.shape)} and denoised {tuple(denoised.shape)} differ")
        if denoised.ndim == 2:
            raw, denoised = raw[None], denoised[None]
        if denoised.ndim != 3:
            raise ValueError(f"expected (B, H, W) frames, got {tuple(denoised.shape)}")
        need = self.min_side(vacuum is not None)
        if min(denoised.shape[1:]) < need:
            raise ValueError(f"frames must be at least {need} pixels on a side for these parameters")
        raw = raw.to(self.device)
        denoised = denoised.to(self.device, torch.float32)
        if vacuum is None:
            lam0 = self.vacuum(raw, denoised)
        else:
            lam0 = vacuum.to(self.device, torch.float32).reshape(-1).expand(denoised.shape[0]).contiguous()
        centres = self.detect(denoised, lam0)
        llr, lam1, k, n = self.llr(raw, denoised, centres, lam0)
        llr_map = self.paint(tuple(denoised.shape), centres, llr)
        return DeviceColumns(llr_map, centres, llr, lam1, k, n, lam0)

    def __call__(
        self, raw: torch.Tensor, denoised: torch.Tensor, vacuum: torch.Tensor | None = None
    ) -> LikelihoodResult:
        """``compute``, with the columns split per frame (one small host copy for the split)."""
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


def _blocks(x: torch.Tensor, s: int, nh: int, nw: int) -> torch.Tensor:
    """(B, H, W) -> (B, nh * nw, s * s): the frame's whole s x s blocks, one per row."""
    b = x.shape[0]
    x = x[:, : nh * s, : nw * s].reshape(b, nh, s, nw, s).permute(0, 1, 3, 2, 4)
    return x.reshape(b, nh * nw, s * s)


def _sliding_max(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """out[i] = max(x[i : i + length]) along ``dim`` by doubling spans: log2(length) elementwise maxima.

    A square maximum filter is two of these (rows, then columns); torch's stride-1 max_pool2d costs
    (2 m + 1)^2 per pixel on CPU, this costs ~2 log2(2 m + 1).
    """
    span = 1
    while 2 * span <= length:
        n = x.shape[dim]
        x = torch.maximum(x.narrow(dim, 0, n - span), x.narrow(dim, span, n - span))
        span *= 2
    rest = length - span
    if rest:
        n = x.shape[dim]
        x = torch.maximum(x.narrow(dim, 0, n - rest), x.narrow(dim, rest, n - rest))
    return x


def estimate_vacuum(raw: torch.Tensor, denoised: torch.Tensor, cfg: LikelihoodConfig) -> torch.Tensor:
    """lam0 per frame (B,) in counts/pixel; see ``LikelihoodStage.vacuum`` for the estimator."""
    if denoised.ndim == 2:
        raw, denoised = raw[None], denoised[None]
    return LikelihoodStage(cfg, denoised.device).vacuum(raw, denoised)


def detect_columns(
    denoised: torch.Tensor, cfg: LikelihoodConfig, vacuum: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Column centres per frame, each (K, 2) float32 [row, col] in pixels.

    Without ``vacuum`` the response is scaled by the frame's vacuum estimated from the denoised frame
    itself (or the fixed value), so ``threshold`` stays in units of the vacuum level.
    """
    if denoised.ndim == 2:
        denoised = denoised[None]
    stage = LikelihoodStage(cfg, denoised.device)
    d = denoised.to(torch.float32)
    lam0 = stage.vacuum(d, d) if vacuum is None else vacuum.to(d.device, torch.float32)
    c = stage.detect(d, lam0)
    counts = torch.bincount(c[:, 0], minlength=d.shape[0]).tolist()
    return list(c[:, 1:].to(torch.float32).split(counts))


def likelihood_map(
    raw: torch.Tensor, denoised: torch.Tensor, cfg: LikelihoodConfig, vacuum: torch.Tensor | None = None
) -> LikelihoodResult:
    """One-shot convenience; the live pipeline keeps a ``LikelihoodStage`` instead."""
    return LikelihoodStage(cfg, denoised.device)(raw, denoised, vacuum)
