"""Shared fixtures: tiny real engines (random weights, real files, real ONNX) made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sbd_stream.card import EngineCard, TilingDefaults, write_engine
from sbd_stream.model import UNet


def make_tiny_engine(
    path: Path, scales: int = 2, channels: int = 4, tile: int = 64, margin: int = 8, overlap: int = 8
) -> Path:
    """Write a real engine directory with a small random UNet whose output tracks its input.

    BatchNorm running statistics are randomised too, so eval-mode BN is a non-trivial affine map and
    exactness tests can't pass by accident.
    """
    torch.manual_seed(1234)
    model = UNet(scales=scales, channels=channels)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    card = EngineCard(
        name=path.name,
        scales=scales,
        channels=channels,
        tiling=TilingDefaults(tile=tile, margin=margin, overlap=overlap),
        training_data={"description": "untrained random weights for tests"},
    )
    write_engine(path, model.eval(), card)
    return path


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_engine(tmp_path_factory.mktemp("engines") / "tiny-unet2")
