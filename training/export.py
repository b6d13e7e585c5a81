"""Turn a training run into an engine directory, and compile a TensorRT plan for the local GPU.

The card written here carries what a user needs to trust the engine: the data it saw (file, preset,
split structure ids), what training cost (wall time, steps, epochs, seed, command) and its test
metrics. ``write_engine`` adds weights, a verified ONNX and checksums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sbd_stream.card import EngineCard, load_card, write_engine
from sbd_stream.normalisation import Normalisation
from training.train import TrainConfig, build_network


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any], torch.nn.Module]:
    """Config, summary and best-validation network of a finished (or interrupted) run."""
    cfg = TrainConfig.model_validate_json((run_dir / "config.json").read_text())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    net = build_network(cfg)
    weights = run_dir / "best.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} missing: the run never validated")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return cfg, summary, net.eval()


def card_for_run(cfg: TrainConfig, summary: dict[str, Any], name: str | None = None) -> EngineCard:
    keep = (
        "steps",
        "samples",
        "epochs",
        "best_val_psnr",
        "best_step",
        "wall_s",
        "world_size",
        "device",
        "threads",
        "seed",
        "command",
    )
    training = {k: summary[k] for k in keep if k in summary}
    training.update(
        {
            "loss": "MSE",
            "optimizer": f"Adam lr={cfg.lr}, x{cfg.lr_factor} on val-PSNR plateau ({cfg.plateau_patience})",
            "early_stop_patience": cfg.early_stop_patience,
            "batch": cfg.batch,
            "augment": cfg.augment.model_dump(mode="json"),
            "max_minutes": cfg.max_minutes,
        }
    )
    attrs = summary.get("data_attrs", {})
    training_data = {
        "file": str(cfg.data),
        "preset": attrs.get("preset"),
        "images": summary.get("split_images"),
        "split": cfg.split.model_dump(mode="json"),
        "structures": summary.get("structures"),
        "description": (
            "synthetic Gaussian-blob lattice (training.synthetic_data), not physical"
            if attrs.get("preset") == "synthetic"
            else "abTEM multislice simulations of Pt nanoparticles on CeO2 (training.simulate)"
        )
        + "; fresh Poisson noise per patch at the data set's dose",
    }
    return EngineCard(
        name=name or cfg.name,
        architecture=cfg.architecture,
        scales=cfg.scales,
        channels=cfg.channels,
        tiling=cfg.tiling,
        normalisation=Normalisation(dose=float(summary.get("dose", 0.45))),
        pixel_size_A=summary.get("pixel_size_A"),
        training_data=training_data,
        training=training,
        notes=cfg.notes,
    )


def export_run(
    run_dir: Path, engine_dir: Path, name: str | None = None, metrics: dict[str, Any] | None = None
) -> EngineCard:
    """Write ``engine_dir`` (model.pt, model.onnx, card.json) from the best checkpoint of ``run_dir``."""
    cfg, summary, net = load_run(run_dir)
    card = card_for_run(cfg, summary, name or engine_dir.name)
    if metrics:
        card = card.model_copy(update={"metrics": metrics})
    return write_engine(engine_dir, net, card)


def set_metrics(engine_dir: Path, metrics: dict[str, Any]) -> None:
    """Record test metrics in an existing card (checksums cover the model files, not the card)."""
    card = load_card(engine_dir).model_copy(update={"metrics": metrics})
    (engine_dir / "card.json").write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")


class NoGPU(RuntimeError):
    """TensorRT plans can only be built on the GPU that will run them."""


def build_engine(
    engine_dir: Path, precision: str = "fp16", tile: int | None = None, max_batch: int = 16
) -> Path:
    """Compile (or find cached) the TensorRT plan of ``engine_dir`` for this machine's GPU."""
    from sbd_stream.engines.tensorrt_engine import cached_plan, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        raise NoGPU(
            f"cannot build a TensorRT plan here: {reason}. Plans are specific to the GPU, CUDA and TensorRT "
            "version that build them; run `sbd-train build-engine` on the machine that will serve the engine."
        )
    card = load_card(engine_dir)
    return cached_plan(engine_dir, card, precision, tile or card.tiling.tile, max_batch)
