"""One interface for every inference backend: ``run(batch) -> batch`` on device tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from sbd_stream.engines.card import EngineCard
from sbd_stream.engines.errors import ArtefactError


class EngineUnavailable(RuntimeError):
    """The backend cannot run here (package missing, no GPU, no model file); the reason says which."""


class Engine(ABC):
    """A compiled or eager network behind ``run``.

    ``run`` takes a (N, 1, h, w) float32 tensor of normalised tiles and returns the same shape on the
    engine's device; it must accept any N (engines with a fixed batch pad and slice internally).
    """

    kind: str = "base"
    model_sha: str = ""
    """SHA-256 of the model file this engine loaded, set once the engine has verified and read it."""

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
        """``<card name>@<sha256[:12] of the model file loaded>/<backend>-<precision>``.

        From the hash of the bytes actually loaded (``model_sha``), never the card's claim: a torch
        engine beside a damaged ``model.onnx`` used to carry that file's claimed hash (``@000000000000``,
        ``@abc``), which named no file at all."""
        return f"{self.card.name}@{self.model_sha[:12]}/{self.kind}-{self.precision}"

    def warmup_side(self) -> int:
        """Side of the one square tile ``warm_up`` runs: the smallest multiple of the network's size
        granularity that is at least 64 px, so the deepest level still has 3 x 3 pixels and every tap
        of every convolution meets a real pixel (a NaN weight on a border tap could hide on a smaller
        tile, whose taps there only meet padding). Fixed-shape engines override it."""
        multiple = int(getattr(self.card.build_model_meta(), "multiple", 1))
        return multiple * max(1, -(-64 // multiple))

    @abstractmethod
    def run(self, batch: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "device": str(self.device),
            "precision": self.precision,
            "engine_id": self.engine_id,
        }


def warm_up(engine: Engine) -> float:
    """Run one tile through ``engine`` at load and refuse it (``ArtefactError``) unless the output has
    the tile's shape and is finite; returns the seconds it took.

    Why: an ONNX that ORT cannot run, or weights holding NaN / Inf, used to be accepted at load, then
    failed or wrote NaN on every frame (the live service counted NaN frames as denoised, exit 0). One
    small tile costs milliseconds (``warmup_side``) and turns that into one line at start.
    """
    import time

    side = engine.warmup_side()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, side, side, generator=gen).to(engine.device)
    what = f"{engine.card.name} ({engine.kind})"
    t0 = time.perf_counter()
    try:
        y = engine.run(x)
    except Exception as e:  # ORT's errors derive from Exception only; CUDA / TensorRT raise RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtefactError(f"{what} cannot run one {side}x{side} tile: {first[:200]}") from e
    if tuple(y.shape) != tuple(x.shape):
        raise ArtefactError(f"{what} turned a {tuple(x.shape)} tile into {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ArtefactError(
            f"{what}: non-finite output (NaN or Inf) on a warm-up tile; its weights are broken"
        )
    return time.perf_counter() - t0
