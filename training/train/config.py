"""What a training run depends on: ``TrainConfig`` (saved beside its checkpoints and into the engine card).

Kept apart from the named training presets (``presets``) and the loop (``loop``) so the export, the GPU
recipe and the CLI can read a run's config without importing the loop.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from sbd_stream.compute.model import Architecture
from sbd_stream.engines.card import TilingDefaults
from training.sim.splits import SplitSpec
from training.train.augment import AugmentSpec

DEVICE_PATTERN = r"^(cpu|cuda(:[0-9]+)?|mps)$"
"""Devices a run can train on; checked up front, not by torch after the data set is read."""


class LRSchedule(StrEnum):
    """``plateau``: halve on a validation plateau (the paper's; open-ended CPU runs that resume).
    ``cosine``: decay from ``lr`` to ``min_lr`` over the budget (the larger of the step and time
    fractions), for a run with a fixed budget such as a GPU lease, which a plateau schedule
    would end still at a high rate."""

    plateau = "plateau"
    cosine = "cosine"


class TrainConfig(BaseModel):
    """Everything a run depends on; saved next to its checkpoints and into the engine card."""

    name: str = "sbd-unet4-default"
    data: Path = Path("data/mini.h5")
    extra_data: list[Path] = Field(
        [],
        description="more simulated sets whose train splits join the training images and whose val splits "
        "join validation (same dose and pixel as data; e.g. the paper's models under another imaging model)",
    )
    extra_data_weights: list[float] = Field(
        [],
        description="how often each extra set's images are drawn relative to data's (one per extra set; "
        "empty: all 1, every train image equally likely)",
    )
    out_dir: Path = Path("runs")
    architecture: Architecture = Architecture.unet
    scales: int = 4
    channels: int = 16
    space_to_depth: int = Field(
        1, ge=1, description="UNet on s x s pixel blocks (s^2 channels at 1/s the resolution); 1: full"
    )
    depth: int = 20
    augment: AugmentSpec = AugmentSpec()
    split: SplitSpec = SplitSpec()
    batch: int = Field(8, gt=0, description="per process")
    lr: float = Field(1e-3, ge=0, description="initial rate; 0 keeps the weights (tests); --lr must be > 0")
    lr_factor: float = 0.5
    lr_schedule: LRSchedule = LRSchedule.plateau
    plateau_patience: int = Field(3, ge=0, description="validations without gain before halving the LR")
    early_stop_patience: int = Field(8, ge=1, description="validations without gain before stopping")
    min_lr: float = 1e-6
    max_steps: int = Field(100_000, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    val_every: int = Field(50, ge=1)
    val_images: int = 16
    val_seed: int = 12345
    log_every: int = Field(10, ge=1)
    seed: int = Field(0, ge=0, description="NumPy seeds are non-negative (a negative one failed mid-run)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process (None: torch's)")
    device: str | None = Field(
        None, pattern=DEVICE_PATTERN, description="cpu | cuda | cuda:N | mps (None: cuda if available)"
    )
    tiling: TilingDefaults = TilingDefaults(tile=256, margin=48, overlap=32)
    preload_max_gb: float = Field(4.0, description="train splits up to this size are held in memory")
    init_from: Path | None = Field(
        None,
        description="engine directory (or name under engines/) whose weights start a fresh run; "
        "ignored when the run resumes from its own last.pt",
    )
    freeze_norm_after: int | None = Field(
        None,
        ge=0,
        description="from this step on, batch-norm layers run in eval mode while training (running "
        "statistics frozen, affine weights still learn), so training optimises the network inference runs; "
        "from step 0 in a run started with init_from",
    )
    val_dose_factors: list[float] = Field(
        default_factory=list,
        description="extra validation doses (factors of the nominal); checkpoints, LR and early stopping "
        "then use the mean PSNR over the nominal and these doses",
    )
    equivariance_weight: float = Field(
        0.0,
        ge=0,
        description="each step also runs the batch in one random other right-angle orientation, turned "
        "back: loss = mean of both errors + this x their squared difference (0: off; one forward pass)",
    )
    amp: str = Field(
        "off",
        pattern="^(off|bf16)$",
        description="bf16: forward and loss under bfloat16 autocast, network in channels-last layout "
        "(tensor cores on a GPU; no loss scaling needed); weights, optimiser and validation stay float32",
    )
    notes: str = ""

    @field_validator("extra_data_weights")
    @classmethod
    def _weights_are_finite(cls, weights: list[float]) -> list[float]:
        """NaN passed ``w < 0`` and ``inf`` made the draw probabilities NaN: the run folder was made and
        the run died on NumPy's "Probabilities contain NaN" (audit 24)."""
        for w in weights:
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"{w} is not a finite non-negative number")
        return weights

    @field_validator("augment")
    @classmethod
    def _patch_fits_the_network(cls, augment: AugmentSpec, info: ValidationInfo) -> AugmentSpec:
        """A patch the network cannot halve ``scales`` times fails deep in the first step (a torch size
        mismatch); say which multiple it needs instead."""
        arch = info.data.get("architecture")
        if arch is None:
            return augment
        if Architecture(arch) is Architecture.unet:
            s2d = info.data.get("space_to_depth", 1)
            multiple = 2 ** info.data.get("scales", 4) * s2d
            what = f"a {info.data.get('scales')}-scale UNet" + (
                f" on {s2d} x {s2d} blocks" if s2d > 1 else ""
            )
        else:
            multiple = 2 if Architecture(arch) is Architecture.small_unet else 1
            what = f"the {Architecture(arch).value} network"
        if augment.patch % multiple:
            lo = max(multiple, augment.patch // multiple * multiple)
            raise ValueError(
                f"patch {augment.patch} px is not a multiple of {multiple} px, which {what} needs "
                f"(e.g. {lo} or {lo + multiple})"
            )
        return augment

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name
