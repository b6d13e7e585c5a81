"""The GPU recipe's options (``RecipeConfig``), its step names and defaults, and what the machine has."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

STEPS = ("simulate", "train", "export", "tensorrt", "evaluate")
"""In the order they run; ``steps`` picks a subset, the order stays this one."""

NEEDS = {"train": "simulate", "export": "train", "tensorrt": "export", "evaluate": "export"}
"""A step is not run when the step it depends on failed in this call (not when it was left out)."""

MODELS: dict[str, tuple[int, int]] = {
    # the shipped detector engine's network (49 k parameters): --init-from engines/sbd-unet4-detector
    "detector": (4, 16),
    # same field of view (245 px = 59 A at the 0.24 A working pixel; the paper's network sees 54 A),
    # 16x the channel products: what a GPU affords at this sampling
    "wide": (4, 64),
    # the `paper` training preset's network (6 scales x 128 channels, FoV 1013 px: more than a 256 px frame)
    "paper": (6, 128),
}
"""UNet (scales, channels) by name; ``scales`` / ``channels`` override single values."""

GPU_DEFAULTS: dict[str, Any] = {
    "batch": 16,
    "threads": 4,
    "preload_max_gb": 32.0,
    "max_steps": 10_000_000,
    "lr_schedule": "cosine",
    "early_stop_patience": 1_000_000,
    "freeze_norm_after": -1,
}
"""On CUDA: 16 whole 256 px frames per GPU and step, the set held in GPU memory up to 32 GB, no step
cap, and the rate decayed by a cosine over the time budget (a lease is a fixed budget: the plateau
schedule would end it still at a high rate), so the budget, not early stopping, ends the run; the best
validation checkpoint is still the one exported.

Batch-norm statistics are never frozen on a GPU. The detector preset freezes them at step 2,000 because
its CPU batch of 2 frames at different doses gives noisy batch statistics; with 16 frames per batch they
are stable, and freezing mid-run under Adam broke the wide network (H200, session 5: the loss jumped
from 0.00095 to 0.21 at the freeze and was back to only 0.0010 after 8,000 more steps, val score 26.2 dB
after 6 min; never frozen: 28.1 dB after 2.5 min; docs/training.md "GPU runs"). A run started from an
engine's weights (``--init-from``) keeps them frozen from step 0, as on the CPU: that engine's running
statistics are already fitted.
"""

SUMMARY_FILE = "gpu_recipe.json"


class RecipeError(RuntimeError):
    """The recipe cannot start as asked (e.g. no GPU and no ``allow_cpu``)."""


class RecipeConfig(BaseModel):
    steps: list[str] = Field(default_factory=lambda: list(STEPS))
    # simulate
    sim_preset: str = Field("paper", description="simulation world (training.sim.worlds.WORLDS)")
    data: Path = Path("data/paper-gpu.h5")
    test: Path | None = Field(None, description="test split at the detector's sampling (the preset's)")
    images: int | None = Field(None, gt=0, description="scale the preset's structure count to ~this many")
    extra_worlds: list[str] = Field(
        default_factory=lambda: ["paper-envelope", "paper-optics", "paper-twins"],
        description="more worlds simulated beside --data as <stem>.<world>.h5 and trained on with it: the "
        "same models imaged other ways (abTEM's focal envelope; drawn focal spread and vibration) and "
        "five-fold twinned particles (paper-twins)",
    )
    extra_weights: list[float] | None = Field(
        None,
        description="how often each extra world's images are drawn relative to --data's, one per extra world "
        "(default: the training preset's when it has one per world, else all 1)",
    )
    workers: int | None = Field(None, ge=1, description="local Dask workers (default: all cores)")
    scheduler: str | None = None
    # train
    train_preset: str = Field(
        "paper-quality", description="training preset (training.train.presets): the quality engine"
    )
    model: str | None = Field(None, description="detector | wide | paper (see MODELS)")
    scales: int | None = Field(None, ge=1)
    channels: int | None = Field(None, ge=1)
    name: str | None = None
    runs: Path = Path("runs")
    device: str | None = None
    allow_cpu: bool = False
    gpus: int | None = Field(None, ge=1, description="GPUs to train on (default: all visible)")
    max_minutes: float | None = 30.0
    max_steps: int | None = None
    batch: int | None = None
    patch: int | None = None
    threads: int | None = None
    preload_max_gb: float | None = None
    seed: int | None = None
    init_from: str | None = None
    lr: float | None = Field(None, gt=0)
    lr_schedule: str | None = Field(None, description="plateau | cosine (default on GPU: cosine)")
    freeze_norm_after: int | None = Field(
        None, ge=-1, description="step at which batch-norm statistics freeze; -1: never; None: the preset's"
    )
    resume: bool = True
    amp: str | None = Field(None, description="off | bf16 (default: the preset's, off)")
    val_every: int | None = Field(None, ge=1, description="steps between validations (default: the preset's)")
    equivariance_weight: float | None = Field(None, ge=0.0, description="orientation term; None: preset's")
    # export
    engine_dir: Path | None = None
    overwrite: bool = Field(
        False, description="export into engine_dir even if it holds other files or another engine"
    )
    card_test_images: int | None = Field(
        48, ge=1, description="test frames for the card's metrics; None: all (0 failed after training)"
    )
    card_metrics: bool = True
    # tensorrt
    precision: str = "fp16"
    max_batch: int = 16
    # evaluate
    results: Path = Path("benchmarks/results/gpu-recipe")
    max_test_images: int = 24
    slow_test_images: int = 6
    dose_curve_images: int = 12
    compare_shipped: bool = True
    engine_kind: str = "onnxruntime"


# --- what the machine has ----------------------------------------------------------------------------


def devices() -> dict[str, Any]:
    """CPU cores, CUDA devices and whether TensorRT can build here (no side effects)."""
    import torch

    from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "cpu_count": os.cpu_count() or 1,
        "cuda_available": cuda,
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "tensorrt_unavailable": tensorrt_unavailable_reason(),
    }


def resolve_device(cfg: RecipeConfig, dev: dict[str, Any]) -> str:
    """The training device; refuses the CPU unless ``allow_cpu`` (the recipe is sized for GPUs)."""
    device = cfg.device or ("cuda" if dev["cuda_available"] else "cpu")
    if device.startswith("cuda") and not dev["cuda_available"]:
        raise RecipeError(f"--device {device}: no CUDA GPU visible to torch")
    if device == "cpu" and not cfg.allow_cpu:
        raise RecipeError(
            "no CUDA GPU visible to torch (or --device cpu): this recipe is sized for GPUs; "
            "pass --allow-cpu for a smoke run on the CPU"
        )
    return device


def selected_steps(steps: list[str]) -> list[str]:
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise RecipeError(f"unknown steps {unknown}; choose from {','.join(STEPS)}")
    return [s for s in STEPS if s in steps]
