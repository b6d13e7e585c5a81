"""Eager PyTorch: runs everywhere, the reference the compiled engines are checked against."""

from __future__ import annotations

from pathlib import Path

import torch

from sbd_stream.engines.base import Engine, EngineUnavailable
from sbd_stream.engines.card import EngineCard, load_torch_weights


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, engine_dir: Path, card: EngineCard, device: str = "cpu", batch: int = 16) -> None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("torch engine asked for CUDA but torch.cuda.is_available() is False")
        super().__init__(engine_dir, card, dev, batch)
        model, self.model_sha = load_torch_weights(engine_dir, card)
        self.model = model.to(dev)

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self._device, torch.float32, non_blocking=True))
