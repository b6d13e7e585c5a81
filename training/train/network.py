"""The network a config names, whole-image inference, batch-norm freezing and weights from an engine.

Shared by the loop (``loop``), the export (``export``) and the GPU recipe's plan, none of which needs the
others for this.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sbd_stream.compute.model import Architecture, DnCNN, SmallUNet, UNet
from training.train.config import TrainConfig


def build_network(cfg: TrainConfig) -> nn.Module:
    if cfg.architecture is Architecture.unet:
        return UNet(scales=cfg.scales, channels=cfg.channels)
    if cfg.architecture is Architecture.dncnn:
        return DnCNN(depth=cfg.depth, channels=cfg.channels)
    return SmallUNet()


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
