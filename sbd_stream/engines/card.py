"""Engine artefacts: ``engines/<name>/`` with model files and a ``card.json`` that describes them.

The card is the single source of truth for how to run a model (architecture, tile, margin,
normalisation) and of what it was trained on and how well it did. Checksums in the card are verified on
every load, so a truncated download or a swapped file fails loudly instead of denoising wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sbd_stream.compute.model import Architecture, build_model, field_of_view
from sbd_stream.compute.normalisation import Normalisation

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
DEFAULT_ENGINE = "sbd-unet4-paper-twins"
"""The shipped live engine: 0.24 A working pixel (the paper's 0.060 A detector binned 4 x 4), 125 e/A^2,
trained on the paper's world (support up to half a 5 x 5 nm field, all 8 orientations), then on the same
models imaged three ways: explicit focal averaging, abTEM's envelope, and drawn focal spreads (2-6 nm) and
vibrations (0-60 pm) (docs/training.md, "Three imaging worlds"), then with five-fold twinned particles
added (docs/training.md, "Twinned particles"). ``sbd-unet4-paper`` is the same network before those
fine-tunes, ``sbd-unet4-paper-optics`` before the last."""


class TilingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tile: int = Field(256, gt=0)
    margin: int = Field(32, ge=0)
    overlap: int = Field(32, ge=0)


class EngineCard(BaseModel):
    """What ``card.json`` holds. Unknown keys are kept so newer cards still load."""

    model_config = ConfigDict(extra="allow")

    name: str
    architecture: Architecture = Architecture.unet
    scales: int = 4
    channels: int = 32
    space_to_depth: int = Field(
        1, ge=1, description="UNet on s x s pixel blocks (1: full resolution); see compute.model.UNet"
    )
    parameters: int = 0
    field_of_view: int = 0
    tiling: TilingDefaults = TilingDefaults()
    normalisation: Normalisation = Normalisation()
    pixel_size_A: float | None = Field(
        None, gt=0, description="the engine's working pixel, A at the specimen (frames are binned to it)"
    )
    dose_e_per_A2: float | None = Field(
        None, gt=0, description="nominal dose per frame it was trained at, electrons per A^2"
    )
    dose_range: tuple[float, float] = Field(
        (1.0, 1.0), description="trained dose range as factors of the nominal dose (low, high)"
    )
    training_data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    checksums: dict[str, str] = Field(default_factory=dict)
    notes: str = ""

    @model_validator(mode="after")
    def _dose_consistent(self) -> EngineCard:
        """Counts per working pixel in vacuum follow from dose per area and pixel size; they must agree."""
        if self.dose_e_per_A2 is None and self.pixel_size_A is not None and self.normalisation.kind == "dose":
            # a card that states its working pixel and counts but no dose per area (sbd-unet4-default:
            # 0.45 counts at 0.155 A) has one all the same; `info` showed null and no dose check ran
            self.dose_e_per_A2 = self.normalisation.dose / self.pixel_size_A**2
        if self.dose_e_per_A2 is not None and self.pixel_size_A is not None:
            expected = self.dose_e_per_A2 * self.pixel_size_A**2
            if abs(expected / self.normalisation.dose - 1) > 0.02:
                raise ValueError(
                    f"card says {self.dose_e_per_A2} e/A^2 at {self.pixel_size_A} A pixels "
                    f"(= {expected:.4g} counts/px) but normalises by {self.normalisation.dose} counts/px"
                )
        lo, hi = self.dose_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"dose_range {self.dose_range} must bracket 1 (factors of the nominal dose)")
        return self

    @property
    def working_dose_counts(self) -> float:
        """Expected counts per working pixel in vacuum at the nominal dose."""
        return self.normalisation.dose

    def build_model(self) -> torch.nn.Module:
        return build_model(
            self.architecture, scales=self.scales, channels=self.channels, space_to_depth=self.space_to_depth
        )


class ArtefactError(RuntimeError):
    """An engine directory is missing, incomplete, or does not match its card."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_engine_root() -> Path:
    """``$SBD_ENGINE_DIR`` or the ``engines/`` folder of the source tree."""
    env = os.environ.get("SBD_ENGINE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "engines"


FAST_ENGINE = "sbd-unet3s2-paper-twins"
"""The fast live engine: the default's network on 2 x 2 pixel blocks (``space_to_depth`` 2), ~2.5x the
batch stage's frames/s on a CPU for ~0.5 dB less (docs/training.md, "Fast live engine"), fine-tuned on the
same worlds as the default (docs/training.md, "Two focal models", "Three imaging worlds", "Twinned
particles"); the live service's engine on a CPU (``live_engine``). ``sbd-unet3s2-paper`` is the same
network before those fine-tunes, ``sbd-unet3s2-paper-optics`` before the last."""

QUALITY_ENGINE = "sbd-unet4x64-paper"
"""The quality engine: the same 59 A field of view as the live one, 64 channels (16x its channel
products); too slow for 40 Hz on a CPU, trained by the GPU recipe (``sbd-train gpu-recipe``)."""


def offline_engine(gpu: bool | None = None, root: Path | None = None) -> str:
    """The engine offline work uses when none is named: the quality engine where it keeps up (a CUDA
    GPU) and is installed under the engine root, else the shipped live engine."""
    root = root or default_engine_root()
    if gpu is None:
        gpu = torch.cuda.is_available()
    if gpu and (root / QUALITY_ENGINE / CARD_FILE).is_file():
        return QUALITY_ENGINE
    return DEFAULT_ENGINE


def live_engine(device: str | None = None, gpu: bool | None = None) -> str:
    """The engine the live service uses when none is named: the fast engine on a CPU, where the
    default network cannot keep up with 40 Hz beside the rest of the service (issue 24, ``sbd-stream
    demo`` on 2 cores: 441 of 1200 frames shown against 854), the default engine on a CUDA GPU, where
    either keeps up and the default is ~0.5 dB better (docs/training.md, "Fast live engine")."""
    if gpu is None:
        gpu = torch.cuda.is_available() and not (device or "").startswith("cpu")
    return DEFAULT_ENGINE if gpu else FAST_ENGINE


def resolve_engine_dir(engine: str | Path | None) -> Path:
    """Accept a path to an engine directory or the name of one under the engine root."""
    if engine is None:
        engine = DEFAULT_ENGINE
    p = Path(engine)
    if (p / CARD_FILE).is_file():
        return p
    q = default_engine_root() / str(engine)
    if (q / CARD_FILE).is_file():
        return q
    if p.is_absolute() or p.resolve() == q.resolve():  # one place looked at: name it once
        raise ArtefactError(f"no engine '{engine}': {p} holds no {CARD_FILE}")
    raise ArtefactError(f"no engine '{engine}': neither {p} nor {q} holds a {CARD_FILE}")


def load_card(engine_dir: Path) -> EngineCard:
    path = engine_dir / CARD_FILE
    try:
        return EngineCard.model_validate_json(path.read_text())
    except FileNotFoundError as e:
        raise ArtefactError(f"{path} not found") from e
    except ValueError as e:
        raise ArtefactError(f"{path} is not a valid engine card: {e}") from e


def verify_file(engine_dir: Path, card: EngineCard, filename: str) -> Path:
    """Path of ``filename`` after checking it against the card's checksum."""
    path = engine_dir / filename
    if not path.is_file():
        raise ArtefactError(f"{path} not found")
    expected = card.checksums.get(filename)
    if expected is None:
        raise ArtefactError(f"card of {engine_dir.name} has no checksum for {filename}; refusing to load it")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtefactError(
            f"checksum mismatch for {path}: card says {expected[:12]}..., file is {actual[:12]}..."
        )
    return path


def load_torch_model(engine_dir: Path, card: EngineCard | None = None) -> torch.nn.Module:
    """Build the card's network and load its verified weights, never unpickling arbitrary objects."""
    card = card or load_card(engine_dir)
    path = verify_file(engine_dir, card, WEIGHTS_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError and friends for non-tensor payloads
        raise ArtefactError(f"{path} is not a plain state dict (refusing to unpickle it): {e}") from e
    model = card.build_model()
    model.load_state_dict(state)
    return model.eval()


def write_engine(
    engine_dir: Path,
    model: torch.nn.Module,
    card: EngineCard,
    onnx: bool = True,
) -> EngineCard:
    """Save weights (and ONNX), fill in the derived card fields and checksums, write ``card.json``."""
    from sbd_stream.engines.onnx_export import export_onnx

    engine_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    torch.save(model.state_dict(), engine_dir / WEIGHTS_FILE)
    checksums = {WEIGHTS_FILE: sha256_file(engine_dir / WEIGHTS_FILE)}
    if onnx:
        export_onnx(model, engine_dir / ONNX_FILE)
        checksums[ONNX_FILE] = sha256_file(engine_dir / ONNX_FILE)
    card = card.model_copy(
        update={
            "parameters": sum(p.numel() for p in model.parameters()),
            "field_of_view": field_of_view(model),
            "checksums": checksums,
        }
    )
    (engine_dir / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return card
