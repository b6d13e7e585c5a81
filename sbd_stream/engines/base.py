"""One interface for every inference backend: ``run(batch) -> batch`` on device tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from sbd_stream.engines.card import EngineCard


class EngineUnavailable(RuntimeError):
    """The backend cannot run here (package missing, no GPU, no model file); the reason says which."""


class Engine(ABC):
    """A compiled or eager network behind ``run``.

    ``run`` takes a (N, 1, h, w) float32 tensor of normalised tiles and returns the same shape on the
    engine's device; it must accept any N (engines with a fixed batch pad and slice internally).
    """

    kind: str = "base"

    def __init__(self, engine_dir: Path, card: EngineCard, device: torch.device, batch: int = 16) -> None:
        self.engine_dir = engine_dir
        self.card = card
        self._device = device
        self._batch = batch

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def max_batch(self) -> int:
        """Tiles per call that keep memory bounded; the denoiser splits larger batches."""
        return self._batch

    @property
    def engine_id(self) -> str:
        sha = self.card.checksums.get("model.onnx") or self.card.checksums.get("model.pt", "")
        return f"{self.card.name}@{sha[:12]}/{self.kind}-{self.precision}"

    @abstractmethod
    def run(self, batch: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "device": str(self.device),
            "precision": self.precision,
            "engine_id": self.engine_id,
        }
