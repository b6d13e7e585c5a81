"""Training presets: named starting points for ``TrainConfig`` (``sbd-train train --preset NAME``).

Not to be confused with the simulation's *worlds* (``training.sim.worlds``, ``sbd-train simulate
--preset``). The table is data, written once here and read-only (``TRAINING_PRESETS``): a preset is a
partial ``TrainConfig`` whose missing fields take the model's defaults, and command-line options
override single fields (``preset_config``).
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from training.train.config import TrainConfig

CPU_TILING = {"tile": 1280, "margin": 48, "overlap": 32}
"""Big tiles for CPU: a 1024^2 frame runs as one 1184^2 tile instead of nine 512^2 ones (2.4x the work)."""

WHOLE_IMAGES: dict[str, Any] = {
    "batch": 2,
    "val_every": 250,
    "val_images": 32,
    # whole 256 px images, so the patch never truncates the field of view; rotations and rescales of a
    # whole image would need reflected corners, so these presets use flips only
    "augment": {"patch": 256, "max_rotation_deg": 0.0, "rescale_prob": 0.0},
}

WHOLE_FRAME_TILING = {"tile": 512, "margin": 48, "overlap": 32}
"""Frames up to 512 working pixels (2048^2 detector pixels at bin 4) run as one whole-frame tile with no
margin, as trained (``Denoiser.plan``: a single tile needs no seam hand-over, and a margin would grow a
256^2 working frame to 416^2); larger ones (a K2's 960 x 928) are tiled with a 48 px margin and a
32 px cosine hand-over.
"""

FOV_BUDGET = {**WHOLE_IMAGES, "max_steps": 2000, "max_minutes": None, "threads": 2, "tiling": CPU_TILING}
"""Table 3.1 budget: the same steps and samples for every network, ~8-15 min each on 2 cores."""

BASELINE_BUDGET = {**WHOLE_IMAGES, "batch": 1, "max_steps": 1000, "threads": 2}
"""Table 5.1 network baselines: the default's recipe on 1/24 (small UNet) and 1/96 (DnCNN) of its pixels.

Both are 5-40x slower per pixel than the default UNet; equal pixels would take 4-30 hours here.
"""

# The live CPU engine on the paper's world (data/paper.h5, App. A.2/A.3: support up to half of a
# 5 x 5 nm field, 100 models): the detector engine's network and dose mix, continued from its
# committed weights (batch norm frozen from step 0), 208 px windows of the 220 px images in all 8
# right-angle orientations (a real frame can have its support on any side), a cosine decay over the
# run's budget (give --max-minutes; continue a later run with --init-from sbd-unet4-paper).
PAPER_LIVE: dict[str, Any] = {
    "name": "sbd-unet4-paper",
    "data": "data/paper.h5",
    "scales": 4,
    "channels": 16,
    "batch": 4,
    "lr": 5e-4,
    "lr_schedule": "cosine",
    "max_steps": 20000,
    "threads": 2,
    "val_every": 250,
    "val_images": 32,
    "augment": {
        "patch": 208,
        "max_rotation_deg": 0.0,
        "rescale_prob": 0.0,
        "right_angles": True,
        "dose_factors": (0.5, 2.0),
    },
    "val_dose_factors": [0.5, 2.0],
    "init_from": "sbd-unet4-detector",
    "freeze_norm_after": 0,  # the engine's running statistics, as it runs in the service
    "tiling": WHOLE_FRAME_TILING,
}
"""The live CPU engine's recipe on the paper's world."""

# The fast live engine (issue 24: the batch stage 2x faster on CPU): the live engine's network on 2 x 2
# pixel blocks (``space_to_depth`` 2, compute.model.UNet): one scale fewer at half the resolution, so
# about the same field of view in A (235 px = 56 A) at ~1/3 of the operations. Its inner levels start
# from the live engine's (training.train.network.transplant_to_blocks); the new input and output convs
# learn their batch-norm statistics for 500 steps before those freeze. Patches are a multiple of its
# 16 px granularity.
PAPER_FAST: dict[str, Any] = {
    **PAPER_LIVE,
    "name": "sbd-unet3s2-paper",
    "scales": 3,
    "space_to_depth": 2,
    "lr": 1e-3,
    "init_from": "sbd-unet4-paper",
    "freeze_norm_after": 500,
}
"""The fast live engine's recipe on the paper's world."""

# The fast live engine made closer to orientation-equivariant (the live lane runs one orientation per
# frame): continued from its committed weights with the orientation term of training.train.loop.step_loss
# (each batch also in one random other right-angle orientation; twice the step cost), batch norm frozen
# from step 0, a lower rate decayed over the budget (give --max-minutes).
PAPER_FAST_EQUIVARIANT: dict[str, Any] = {
    **PAPER_FAST,
    "lr": 2e-4,
    "init_from": "sbd-unet3s2-paper",
    "freeze_norm_after": 0,
    "equivariance_weight": 1.0,
    "max_steps": 8000,
}
"""Orientation fine-tune of the fast live engine."""

# The fast live engine made robust to how the focal spread is modelled: continued from its committed
# weights on the paper world's train models imaged both ways (explicit focal averaging as Dr. Probe, and
# abTEM's quasi-coherent envelope: data/paper-envelope.h5, `sbd-train simulate --preset paper-envelope`).
# Trained on explicit averaging alone it draws stripes on envelope-imaged supports (user_abtem benchmark).
PAPER_FAST_MIXED: dict[str, Any] = {
    **PAPER_FAST,
    "name": "sbd-unet3s2-paper-mixed",
    "extra_data": ["data/paper-envelope.h5"],
    "lr": 3e-4,
    "lr_schedule": "cosine",
    "init_from": "sbd-unet3s2-paper",
    "freeze_norm_after": 0,
    "max_steps": 8000,
}
"""Fast live engine fine-tuned on both focal models."""

# The same two-focal-model fine-tune for the live / offline engine (the GPU's default and `auto`'s
# offline pick on a CPU): the 4-scale network continued from its committed weights, ~0.3 s per step of
# 4 x 208^2 on 2 cores (8000 steps ~ 42 min).
PAPER_LIVE_MIXED: dict[str, Any] = {
    **PAPER_LIVE,
    "name": "sbd-unet4-paper-mixed",
    "extra_data": ["data/paper-envelope.h5"],
    "lr": 3e-4,
    "lr_schedule": "cosine",
    "init_from": "sbd-unet4-paper",
    "freeze_norm_after": 0,
    "max_steps": 8000,
}
"""Live / offline engine fine-tuned on both focal models."""

# Both engines once more with a third imaging world: the paper's models imaged with each image's focal
# spread (2-6 nm) and vibration (0-60 pm) drawn (data/paper-optics.h5, `sbd-train simulate --preset
# paper-optics`). At the paper's 4 nm / 50 pm alone the engines were no better than a blur in the support of
# frames made at 2.5 nm / 30 pm (benchmarks/user_abtem.py --focal-spread 25 --vibration-pm 30).
THREE_WORLDS = ["data/paper-envelope.h5", "data/paper-optics.h5"]
PAPER_FAST_OPTICS: dict[str, Any] = {
    **PAPER_FAST_MIXED,
    "name": "sbd-unet3s2-paper-optics",
    "extra_data": THREE_WORLDS,
    "init_from": "sbd-unet3s2-paper-mixed",
}
"""Fast live engine fine-tuned on three imaging worlds."""
PAPER_LIVE_OPTICS: dict[str, Any] = {
    **PAPER_LIVE_MIXED,
    "name": "sbd-unet4-paper-optics",
    "extra_data": THREE_WORLDS,
    "init_from": "sbd-unet4-paper-mixed",
}
"""Live / offline engine fine-tuned on three imaging worlds."""

# Both engines once more with five-fold twinned particles (decahedra, icosahedra) of their own 64 models,
# imaged as paper-optics (data/paper-twins.h5, `sbd-train simulate --preset paper-twins`). On the paper's fcc
# particles alone the engines were no better than a blur on icosahedra made without vibration, and within
# 0.1-2 dB of it on twinned particles at the paper's optics (benchmarks/user_abtem.py frames).
FOUR_WORLDS = [*THREE_WORLDS, "data/paper-twins.h5"]
PAPER_FAST_TWINS: dict[str, Any] = {
    **PAPER_FAST_OPTICS,
    "name": "sbd-unet3s2-paper-twins",
    "extra_data": FOUR_WORLDS,
    "extra_data_weights": [1.0, 1.0, 2.0],  # twins ~1/5 of the draws (1/9 of the images)
    "init_from": "sbd-unet3s2-paper-optics",
}
"""Fast live engine fine-tuned on four worlds (three imaging models, and twinned particles)."""
PAPER_LIVE_TWINS: dict[str, Any] = {
    **PAPER_LIVE_OPTICS,
    "name": "sbd-unet4-paper-twins",
    "extra_data": FOUR_WORLDS,
    "extra_data_weights": [1.0, 1.0, 2.0],
    "init_from": "sbd-unet4-paper-optics",
}
"""Live / offline engine fine-tuned on four worlds."""

# The detector engine: 1024^2 detector frames at 0.060 A binned 4 x 4 to 0.24 A working
# pixels, the paper's 125 e/A^2 per frame (7.2 counts per working pixel), trained over 0.5-2x that
# dose. 16 channels: the widest 4-scale UNet measured under 20 ms per 256^2 frame with ONNX Runtime
# (2 threads, batch 4; benchmarks/results/bench_onnx_channels.json). A step budget (reproducible),
# ~50 min on 2 free cores (0.17 s per step); on a shared machine add --max-minutes (the run resumes
# from last.pt; --init-from continues from a shipped engine in a new run).
DETECTOR: dict[str, Any] = {
    "name": "sbd-unet4-detector",
    "data": "data/detector.h5",
    "scales": 4,
    "channels": 16,
    "max_steps": 16000,
    "threads": 2,
    **WHOLE_IMAGES,
    "augment": {**WHOLE_IMAGES["augment"], "dose_factors": (0.5, 2.0)},
    "val_dose_factors": [0.5, 2.0],
    # batch norm's running statistics are an average over the dose mix; with per-batch statistics in
    # training and running ones at inference, the engine lost ~5 dB at 0.5x and 2x (best checkpoint at
    # step 1,500: 18.1 / 22.9 / 18.0 dB at 0.5 / 1 / 2x in eval mode, 20.6 / 21.5 / 21.5 in train mode).
    # Freezing them after warm-up makes training optimise the network the service runs.
    "freeze_norm_after": 2000,
    "tiling": WHOLE_FRAME_TILING,
}
"""The detector engine's preset (also the base of the detector-sampling FoV study)."""

DETECTOR_FOV_BUDGET = {
    **{k: v for k, v in DETECTOR.items() if k != "name"},
    "max_steps": 2000,
    "max_minutes": None,
    "freeze_norm_after": 1500,
}
"""Table 3.1 at the detector's sampling: the detector engine's recipe (0.24 A working pixel, 125 e/A^2,
0.5-2x dose, batch norm frozen after 1500 steps) with the same 2000 steps of 2 x 256^2 for every network
(~30 min for the two small-reach networks side by side on 2 cores, ~6 min for the 4-scale one).
"""

PAPER_FOV_BUDGET: dict[str, Any] = {
    **{k: v for k, v in PAPER_LIVE.items() if k not in ("name", "init_from", "lr")},
    "batch": 2,
    "max_steps": 2000,
    "max_minutes": None,
    "freeze_norm_after": 1500,
}
"""Table 3.1 on the paper's world: the live engine's recipe (208 px windows of the 0.24 A images in all 8
orientations, 0.5-2x dose, cosine decay) from scratch (default learning rate, batch norm frozen after
1500 steps as in the detector study), the same 2000 steps of 2 windows for every network."""

FOV_NETWORKS: dict[int, dict[str, Any]] = {
    13: {"name": "fov13-dncnn6", "architecture": "dncnn", "depth": 6, "channels": 36},
    21: {"name": "fov21-unet1", "scales": 1, "channels": 32},
    53: {"name": "fov53-unet2", "scales": 2, "channels": 22},
    245: {"name": "fov245-unet4", "scales": 4, "channels": 16},
}
"""Table 3.1's networks by exact field of view in working pixels: 13 / 21 / 53 / 245 px = 3.1 / 5.0 / 12.7 /
58.8 A at 0.24 A, 48k / 56k / 49k / 49k parameters; the paper's ~3 A needs 13 px, less than one UNet
scale's 21: a 6-layer DnCNN."""

_TABLE: dict[str, dict[str, Any]] = {
    # The shipped CPU engine: FoV 245 px, ~49k parameters, fast enough for 1024^2 frames on a CPU.
    # Whole 256 px images in the simulation's orientation (flips only): at equal compute this learned
    # faster than 128 px patches with rotations and rescales (+0.8 dB val PSNR after 1000 steps), and the
    # test images are not rotated. 12000 steps of 2 x 256^2 (a step budget, so the run is reproducible):
    # ~55 min on this 2-core machine.
    "default": {
        "scales": 4,
        "channels": 16,
        "max_steps": 12000,
        "threads": 2,
        **WHOLE_IMAGES,
        "tiling": CPU_TILING,
    },
    "detector": DETECTOR,
    "paper-live": PAPER_LIVE,
    "paper-fast": PAPER_FAST,
    "paper-fast-equivariant": PAPER_FAST_EQUIVARIANT,
    "paper-fast-mixed": PAPER_FAST_MIXED,
    "paper-live-mixed": PAPER_LIVE_MIXED,
    "paper-fast-optics": PAPER_FAST_OPTICS,
    "paper-live-optics": PAPER_LIVE_OPTICS,
    "paper-fast-twins": PAPER_FAST_TWINS,
    "paper-live-twins": PAPER_LIVE_TWINS,
    # The quality engine on the paper's world, for a GPU (the recipe's default): the same field of view
    # (245 px = 59 A), 64 channels (777k parameters, 16x the channel products), trained from scratch.
    "paper-quality": {
        **{k: v for k, v in PAPER_LIVE.items() if k not in ("init_from", "freeze_norm_after", "lr")},
        "name": "sbd-unet4x64-paper",
        "channels": 64,
        "batch": 16,
        "device": "cuda",
    },
    # Field-of-view study (Table 3.1): ~48k parameters each, FoV 53 / 245 / 1013 px (exact, measured).
    "fov53": {"name": "fov53-unet2", "scales": 2, "channels": 22, **FOV_BUDGET},
    "fov245": {"name": "fov245-unet4", "scales": 4, "channels": 16, **FOV_BUDGET},
    "fov1013": {"name": "fov1013-unet6", "scales": 6, "channels": 13, **FOV_BUDGET},
    # Baseline networks of Table 5.1 (paper architectures, CPU-sized patches and budgets).
    "small_unet": {
        "name": "sbd-smallunet",
        "architecture": "small_unet",
        **BASELINE_BUDGET,
        "tiling": CPU_TILING,
    },
    "dncnn": {
        "name": "sbd-dncnn",
        "architecture": "dncnn",
        "channels": 64,
        **BASELINE_BUDGET,
        "batch": 4,
        "augment": {**WHOLE_IMAGES["augment"], "patch": 64},  # FoV 41 px: 64 px patches see all of it
        "tiling": CPU_TILING,
    },
    # Paper scale (Sec. 5, App. B.1): 6 scales x 128 channels, 400 px patches; for a GPU.
    "paper": {
        "name": "sbd-unet6-paper",
        "data": "data/paper.h5",
        "scales": 6,
        "channels": 128,
        "batch": 8,
        "augment": {"patch": 384, "rescale_prob": 1.0},
        "val_every": 500,
        "val_images": 128,
        "plateau_patience": 5,
        "early_stop_patience": 15,
        "device": "cuda",
        "tiling": {"tile": 512, "margin": 64, "overlap": 32},
    },
    # Seconds-long smoke run for tests.
    "tiny": {
        "name": "tiny",
        "scales": 2,
        "channels": 4,
        "batch": 2,
        "augment": {"patch": 32},
        "max_steps": 6,
        "val_every": 3,
        "val_images": 2,
        "log_every": 1,
        "tiling": {"tile": 64, "margin": 8, "overlap": 8},
    },
    # Table 3.1 at the detector's sampling and on the paper's world: the same four networks
    **{
        f"fov{f}-detector": {**DETECTOR_FOV_BUDGET, **n, "name": f"{n['name']}-detector"}
        for f, n in FOV_NETWORKS.items()
    },
    **{
        f"fov{f}-paper": {**PAPER_FOV_BUDGET, **n, "name": f"{n['name']}-paper"}
        for f, n in FOV_NETWORKS.items()
    },
}

TRAINING_PRESETS: MappingProxyType[str, dict[str, Any]] = MappingProxyType(_TABLE)
"""Named starting points; command-line options override single fields. Read-only: built once above."""


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    if preset not in TRAINING_PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; choose from {', '.join(TRAINING_PRESETS)}")
    merged: dict[str, Any] = json.loads(json.dumps(TRAINING_PRESETS[preset]))
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return TrainConfig(**merged)
