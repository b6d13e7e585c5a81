"""Training as in Sec. 5: augmented patches, fresh Poisson noise, MSE, Adam, LR halving, early stopping.

One process or many: under ``torchrun`` every rank draws its own batches (seeded by seed, rank and
step, so a resumed run draws exactly what the interrupted one would have) and DistributedDataParallel
averages the gradients; validation is sharded over the ranks and all-reduced, so every rank takes the
same LR / stopping decision. Checkpoints hold only tensors and plain values and load with
``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn import functional as F

from sbd_stream.compute.model import Architecture, DnCNN, SmallUNet, UNet, count_parameters, field_of_view
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.engines.card import TilingDefaults
from training.augment import AugmentSpec, draw_batch
from training.sim.splits import SplitSpec


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
    out_dir: Path = Path("runs")
    architecture: Architecture = Architecture.unet
    scales: int = 4
    channels: int = 16
    depth: int = 20
    augment: AugmentSpec = AugmentSpec()
    split: SplitSpec = SplitSpec()
    batch: int = Field(8, gt=0, description="per process")
    lr: float = 1e-3
    lr_factor: float = 0.5
    lr_schedule: LRSchedule = LRSchedule.plateau
    plateau_patience: int = Field(3, ge=0, description="validations without gain before halving the LR")
    early_stop_patience: int = Field(8, ge=1, description="validations without gain before stopping")
    min_lr: float = 1e-6
    max_steps: int = 100_000
    max_minutes: float | None = None
    val_every: int = 50
    val_images: int = 16
    val_seed: int = 12345
    log_every: int = 10
    seed: int = 0
    threads: int | None = None
    device: str | None = None
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
    notes: str = ""

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name


CPU_TILING = {"tile": 1280, "margin": 48, "overlap": 32}
"""Big tiles for CPU: a 1024^2 frame runs as one 1184^2 tile instead of nine 512^2 ones (2.4x the work)."""

WHOLE_IMAGES = {
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

PRESETS: dict[str, dict[str, Any]] = {
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
    # The detector engine: 1024^2 detector frames at 0.060 A binned 4 x 4 to 0.24 A working
    # pixels, the paper's 125 e/A^2 per frame (7.2 counts per working pixel), trained over 0.5-2x that
    # dose. 16 channels: the widest 4-scale UNet measured under 20 ms per 256^2 frame with ONNX Runtime
    # (2 threads, batch 4; benchmarks/results/bench_onnx_channels.json). A step budget (reproducible),
    # ~50 min on 2 free cores (0.17 s per step); on a shared machine add --max-minutes (the run resumes
    # from last.pt; --init-from continues from a shipped engine in a new run).
    "detector": {
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
    },
    "paper-live": PAPER_LIVE,
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
}
"""Named starting points; command-line options override single fields."""

DETECTOR_FOV_BUDGET = {
    **{k: v for k, v in PRESETS["detector"].items() if k != "name"},
    "max_steps": 2000,
    "max_minutes": None,
    "freeze_norm_after": 1500,
}
"""Table 3.1 at the detector's sampling: the detector engine's recipe (0.24 A working pixel, 125 e/A^2,
0.5-2x dose, batch norm frozen after 1500 steps) with the same 2000 steps of 2 x 256^2 for every network
(~30 min for the two small-reach networks side by side on 2 cores, ~6 min for the 4-scale one).
"""
PRESETS.update(
    {  # FoV 13 / 21 / 53 / 245 working pixels = 3.1 / 5.0 / 12.7 / 58.8 A (exact reach), 48k / 56k / 49k /
        # 49k parameters; the paper's ~3 A needs 13 px, less than one UNet scale's 21: a 6-layer DnCNN
        "fov13-detector": {
            **DETECTOR_FOV_BUDGET,
            "name": "fov13-dncnn6-detector",
            "architecture": "dncnn",
            "depth": 6,
            "channels": 36,
        },
        "fov21-detector": {
            **DETECTOR_FOV_BUDGET,
            "name": "fov21-unet1-detector",
            "scales": 1,
            "channels": 32,
        },
        "fov53-detector": {
            **DETECTOR_FOV_BUDGET,
            "name": "fov53-unet2-detector",
            "scales": 2,
            "channels": 22,
        },
        "fov245-detector": {
            **DETECTOR_FOV_BUDGET,
            "name": "fov245-unet4-detector",
            "scales": 4,
            "channels": 16,
        },
    }
)


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    merged: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return TrainConfig(**merged)


def build_network(cfg: TrainConfig) -> nn.Module:
    if cfg.architecture is Architecture.unet:
        return UNet(scales=cfg.scales, channels=cfg.channels)
    if cfg.architecture is Architecture.dncnn:
        return DnCNN(depth=cfg.depth, channels=cfg.channels)
    return SmallUNet()


def scheduled_lr(cfg: TrainConfig, step: int, elapsed_s: float) -> float | None:
    """The cosine schedule's rate at this point of the budget; None for the plateau schedule."""
    if cfg.lr_schedule is not LRSchedule.cosine:
        return None
    fractions = [step / cfg.max_steps]
    if cfg.max_minutes:
        fractions.append(elapsed_s / (60.0 * cfg.max_minutes))
    p = min(1.0, max(fractions))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def set_train_mode(model: nn.Module, freeze_norm: bool) -> None:
    """Training mode, with batch-norm layers in eval mode (frozen running statistics) if ``freeze_norm``."""
    model.train()
    if freeze_norm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def model_multiple(model: nn.Module) -> int:
    return int(getattr(model, "multiple", 1))


def predict_full(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Whole-image inference on (B, 1, H, W), mirrored up to the model's size multiple and cropped back."""
    m = model_multiple(model)
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return model(x)[..., :h, :w]


def init_weights(cfg: TrainConfig) -> dict[str, Any]:
    """Verified weights of the engine ``cfg.init_from`` (checksums checked), if its network is cfg's."""
    from sbd_stream.engines.card import WEIGHTS_FILE, load_card, load_torch_model, resolve_engine_dir

    engine_dir = resolve_engine_dir(cfg.init_from)
    card = load_card(engine_dir)
    mine, theirs = [cfg.architecture], [card.architecture]
    if cfg.architecture is Architecture.unet:
        mine, theirs = [*mine, cfg.scales, cfg.channels], [*theirs, card.scales, card.channels]
    elif cfg.architecture is Architecture.dncnn:
        mine, theirs = [*mine, cfg.channels], [*theirs, card.channels]
    if mine != theirs:
        raise ValueError(f"--init-from {engine_dir}: its network {theirs} differs from this run's {mine}")
    model = load_torch_model(engine_dir, card)
    info = {
        "engine": card.name,
        "path": str(engine_dir),
        "weights_sha256": card.checksums.get(WEIGHTS_FILE, ""),
        "steps_before": int(card.training.get("steps_total", card.training.get("steps", 0)) or 0),
    }
    return {"state_dict": model.state_dict(), "info": info}


# --- distributed helpers ----------------------------------------------------------------------------


def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _all_reduce(values: list[float]) -> list[float]:
    if not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


# --- data ---------------------------------------------------------------------------------------------


class TrainData:
    """Train images plus a fixed, seeded noisy validation set.

    Sets up to ``preload_max_gb`` are read into memory once (``mini``: 190 MB); larger ones (the paper
    grid: ~56 GB) are read image by image from the HDF5 file for every batch.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1) -> None:
        from training.sim.dataset import SimulatedDataset

        self._ds: SimulatedDataset | None = None
        with SimulatedDataset(cfg.data) as ds:
            self.splits = ds.split(cfg.split)
            self.dose = float(ds.attrs.get("dose", ds.meta(0)["dose"]))
            self.pixel_size_A = float(ds.attrs.get("pixel_size_A", ds.meta(0)["pixel_size_A"]))
            self.dose_e_per_A2 = float(ds.attrs.get("dose_e_per_A2", self.dose / self.pixel_size_A**2))
            self.n_images = len(ds)
            self.train_index = self.splits["train"]
            nbytes = len(self.train_index) * ds.clean(int(self.train_index[0])).nbytes
            self.preloaded = nbytes <= cfg.preload_max_gb * 2**30
            self.train = (
                torch.from_numpy(np.stack([ds.clean(int(i)) for i in self.train_index]))
                if self.preloaded
                else None
            )
            val_idx = self.splits["val"]
            pick = val_idx[np.linspace(0, len(val_idx) - 1, min(cfg.val_images, len(val_idx))).astype(int)]
            mine = pick[rank::world]
            self.val_clean = [ds.clean(int(i)) for i in mine]
            self.val_counts = [
                np.random.default_rng([cfg.val_seed, int(i)]).poisson(np.clip(c, 0, None) * self.dose)
                for i, c in zip(mine, self.val_clean, strict=True)
            ]
            # extra doses: {factor: counts}, fixed and seeded like the nominal set
            self.val_counts_at = {
                f: [
                    np.random.default_rng([cfg.val_seed, int(i), round(1000 * f)]).poisson(
                        np.clip(c, 0, None) * self.dose * f
                    )
                    for i, c in zip(mine, self.val_clean, strict=True)
                ]
                for f in cfg.val_dose_factors
            }
            self.n_val_total = len(pick)
            self.attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
            ids = ds.structure_ids()
            self.structures = {k: sorted({str(ids[i]) for i in v}) for k, v in self.splits.items()}
        if not self.preloaded:
            self._ds = SimulatedDataset(cfg.data)

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    def images(self, which: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B, H, W) clean train images number ``which`` (positions within the train split)."""
        if self.train is not None:
            return self.train[torch.as_tensor(which, device=self.train.device)]
        assert self._ds is not None
        stack = np.stack([self._ds.clean(int(self.train_index[k])) for k in which])
        return torch.from_numpy(stack).to(device, non_blocking=True)


# --- the loop -----------------------------------------------------------------------------------------


def validate(
    model: nn.Module, data: TrainData, norm: Normalisation, device: torch.device, factor: float | None = None
) -> float:
    """Mean PSNR (clean units, clean data range) over the whole validation set, all ranks together.

    ``factor``: the validation set drawn at that multiple of the nominal dose (``val_dose_factors``).
    """
    from training.evaluate.metrics import psnr

    model.eval()
    total = 0.0
    counts_set = data.val_counts if factor is None else data.val_counts_at[factor]
    dose = data.dose * (1.0 if factor is None else factor)
    with torch.no_grad():
        for counts, clean in zip(counts_set, data.val_clean, strict=True):
            x = norm.to_input(torch.from_numpy(counts)[None, None].to(device), dose)
            y = norm.to_clean_units(predict_full(model, x))[0, 0].cpu().numpy()
            total += float(psnr(clean, y))
    model.train()
    s, n = _all_reduce([total, float(len(data.val_counts))])
    return float(s / max(n, 1.0))  # a plain float: checkpoints load with weights_only=True


def _log(run_dir: Path, rank: int, record: dict[str, Any]) -> None:
    if rank != 0:
        return
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
        flush=True,
    )


def train(cfg: TrainConfig, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to ``<run_dir>/summary.json``."""
    rank, world = _dist()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick the fastest kernels
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = TrainData(cfg, rank, world)
    norm = Normalisation(dose=data.dose)
    net = build_network(cfg).to(device)
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.lr_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )
    state = {"step": 0, "best_psnr": -math.inf, "best_step": 0, "bad": 0, "elapsed_s": 0.0, "samples": 0}
    last = run_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location=device, weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state.update(ck["state"])
        _log(run_dir, rank, {"event": "resumed", "step": state["step"]})
    else:
        if rank == 0:
            (run_dir / "log.jsonl").unlink(missing_ok=True)
        if cfg.init_from is not None:
            init = init_weights(cfg)
            net.load_state_dict(init["state_dict"])
            state["init_from"] = init["info"]
            _log(run_dir, rank, {"event": "init_from", **init["info"]})
    if rank == 0:
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
        _log(
            run_dir,
            rank,
            {
                "event": "start",
                "params": count_parameters(net),
                "fov": field_of_view(net),
                "train_images": data.n_train,
                "preloaded": data.preloaded,
                "val_images": data.n_val_total,
                "world": world,
                "device": str(device),
            },
        )
    if data.train is not None:
        data.train = data.train.to(device)
    t0 = time.perf_counter() - state["elapsed_s"]
    ema = None
    stop = False
    # a run that starts from an engine's weights has its running statistics already: freeze at once
    frozen_at = cfg.freeze_norm_after
    if frozen_at is not None and cfg.init_from is not None:
        frozen_at = 0
    model.train()
    while not stop:
        step = state["step"]
        set_train_mode(model, frozen_at is not None and step >= frozen_at)
        rng = np.random.default_rng([cfg.seed, rank, step])
        which = rng.integers(data.n_train, size=cfg.batch)
        x, y = draw_batch(data.images(which, device), rng, cfg.augment, data.dose, norm)
        lr_now = scheduled_lr(cfg, step, time.perf_counter() - t0)
        if lr_now is not None:
            for group in opt.param_groups:
                group["lr"] = lr_now
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] = step = step + 1
        state["samples"] += cfg.batch * world
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        elapsed = time.perf_counter() - t0
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        out_of_time = bool(_all_reduce([float(out_of_time)])[0])
        done = step >= cfg.max_steps or out_of_time
        if step % cfg.log_every == 0:
            _log(
                run_dir,
                rank,
                {
                    "step": step,
                    "loss": ema,
                    "lr": opt.param_groups[0]["lr"],
                    "t_s": elapsed,
                    "samples_per_s": state["samples"] / max(elapsed, 1e-9),
                },
            )
        if step % cfg.val_every == 0 or done:
            v = validate(model, data, norm, device)
            at = {f"val_psnr_x{f:g}": validate(model, data, norm, device, f) for f in cfg.val_dose_factors}
            # selection score: mean PSNR over the nominal and the extra validation doses
            score = float(np.mean([v, *at.values()]))
            if frozen_at is not None and step > frozen_at and state["best_step"] <= frozen_at:
                # checkpoints from before the freeze ran another network (per-batch statistics):
                # forget them, and the plateau counters built on them
                state.update(best_psnr=-math.inf, bad=0)
                sched._reset()
                _log(run_dir, rank, {"event": "norm_frozen_reset_best", "step": step})
            if cfg.lr_schedule is LRSchedule.plateau:
                sched.step(score)
            improved = score > state["best_psnr"]
            if improved:
                state.update(best_psnr=score, best_step=step, bad=0)
                if rank == 0:
                    torch.save(net.state_dict(), run_dir / "best.pt")
            else:
                state["bad"] += 1
            state["elapsed_s"] = time.perf_counter() - t0
            state["last_val"] = {"step": step, "val_psnr": v, **at}
            _log(
                run_dir,
                rank,
                {
                    "step": step,
                    "val_psnr": v,
                    **at,
                    **({"score": score} if at else {}),
                    "best": state["best_psnr"],
                    "lr": opt.param_groups[0]["lr"],
                    "t_s": state["elapsed_s"],
                },
            )
            if rank == 0:
                ck = {
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "state": dict(state),
                }
                torch.save(ck, run_dir / "last.pt.tmp")
                os.replace(run_dir / "last.pt.tmp", last)
            if state["bad"] >= cfg.early_stop_patience:
                _log(run_dir, rank, {"event": "early_stop", "step": step})
                done = True
        stop = done
    summary = {
        "name": cfg.name,
        "steps": state["step"],
        "samples": state["samples"],
        "epochs": state["samples"] / max(data.n_train, 1),
        "best_val_psnr": state["best_psnr"],
        "best_step": state["best_step"],
        "lr_schedule": cfg.lr_schedule.value,
        "val_selection": (
            f"mean val PSNR at x1 and x{', x'.join(f'{f:g}' for f in cfg.val_dose_factors)} the nominal dose"
            if cfg.val_dose_factors
            else "val PSNR at the nominal dose"
        ),
        "wall_s": time.perf_counter() - t0,
        "world_size": world,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(net),
        "field_of_view": field_of_view(net),
        "seed": cfg.seed,
        "command": " ".join(["sbd-train", *sys.argv[1:]]) if sys.argv else "",
        "data": str(cfg.data),
        "dose": data.dose,
        "pixel_size_A": data.pixel_size_A,
        "dose_e_per_A2": data.dose_e_per_A2,
        "dose_factors": list(cfg.augment.dose_factors) if cfg.augment.dose_factors else None,
        "init_from": state.get("init_from"),
        "last_val": state.get("last_val"),
        "structures": data.structures,
        "split_images": {k: len(v) for k, v in data.splits.items()},
        "data_attrs": data.attrs,
    }
    data.close()
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(run_dir, rank, {"event": "done", "steps": state["step"], "best_val_psnr": state["best_psnr"]})
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
