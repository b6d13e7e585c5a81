"""Engine artefacts: ``engines/<name>/`` with model files and a ``card.json`` that describes them.

The card is the single source of truth for how to run a model (architecture, tile, margin,
normalisation) and of what it was trained on and how well it did. Checksums in the card are verified on
every load, so a truncated download or a swapped file fails loudly instead of denoising wrongly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sbd_stream.compute.model import Architecture, build_model, count_parameters, field_of_view
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.config_merge import no_bool
from sbd_stream.engines.artefact_files import load_tensors, mismatch, read_regular, read_verified, sha256_file
from sbd_stream.engines.errors import ArtefactError, IntegrityError
from sbd_stream.engines.network_fit import dncnn_parameters_fit, state_dict_mismatch

log = logging.getLogger(__name__)

__all__ = ["ArtefactError", "EngineCard", "IntegrityError", "load_card", "resolve_engine_dir", "sha256_file"]

CARD_FILE = "card.json"
NAME_PATTERN = r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$"
"""A card's name: no path separator, control character or leading '.' (spaces and accents are fine: a
researcher's folder "my engine ü" names one)."""
FILE_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
"""A file a card lists: a plain name in the engine folder (no '/', no '..', no leading '.')."""
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
    _numbers_not_bools = model_validator(mode="before")(no_bool)

    tile: int = Field(256, gt=0)
    margin: int = Field(32, ge=0)
    overlap: int = Field(32, ge=0)


CARD_FORMAT_VERSION = 1
"""The card layout this version reads and writes. Raised when a field changes meaning (an older
loader would build the wrong network from it), so an older sbd-stream refuses the card in one line
instead of running it. Adding a field with a default that keeps old behaviour does not raise it."""


class EngineCard(BaseModel):
    """What ``card.json`` holds. Unknown keys are kept so newer cards still load; ``load_card`` names
    them in a warning (a typo such as ``pixel_size_a`` otherwise passed unnoticed)."""

    model_config = ConfigDict(extra="allow")
    # card.json's "pixel_size_A": true was a 1 A engine (float(True)); refused in one line (session 35)
    _numbers_not_bools = model_validator(mode="before")(no_bool)

    format_version: int = Field(
        CARD_FORMAT_VERSION,
        ge=1,
        le=CARD_FORMAT_VERSION,
        description="card layout; a newer one than this sbd-stream reads is refused (upgrade sbd-stream)",
    )

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=200,
        description="names TensorRT cache files, so never a path (see NAME_PATTERN)",
    )
    architecture: Architecture = Architecture.unet
    scales: int = Field(4, ge=1, le=8, description="a card's 60 scales once asked for a 2^60 tile multiple")
    channels: int = Field(32, ge=1, le=1024, description="a card's 1e9 channels once allocated 36 GB")
    space_to_depth: int = Field(
        1, description="UNet on s x s pixel blocks (1: full resolution; 2 or 4); see compute.model.UNet"
    )
    parameters: int = Field(0, ge=0, description="0: not stated; else checked against the card's network")
    field_of_view: int = Field(0, ge=0)
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

    @field_validator("space_to_depth")
    @classmethod
    def _block_size(cls, v: int) -> int:
        if v not in (1, 2, 4):
            raise ValueError(f"must be 1, 2 or 4 (got {v})")
        return v

    @field_validator("checksums")
    @classmethod
    def _plain_names_and_sha256(cls, v: dict[str, str]) -> dict[str, str]:
        """Keys name files in the engine folder itself, values are SHA-256 digests: a card listing
        ``../../etc/passwd`` or a checksum ``abc`` was accepted and shown by ``info`` as a file."""
        for name, digest in v.items():
            if not re.fullmatch(FILE_NAME_PATTERN, name) or ".." in name:
                raise ValueError(f"{name!r} is not a plain file name in the engine folder")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"checksum of {name} is not 64 lowercase hex digits (got {digest[:20]!r})")
        return v

    @model_validator(mode="after")
    def _fits_network(self) -> EngineCard:
        """Stated parameter count and field of view must be the card's network's: a card that lies
        about scales, channels or architecture is refused here, before any file is read (its torch
        weights then failed with a traceback, its ONNX ran silently; ``info`` showed its field of view).
        DnCNN cards do not state their depth: their count must fit some depth, their FoV is not checked."""
        if self.architecture is Architecture.dncnn:
            if self.parameters and not dncnn_parameters_fit(self.parameters, self.channels):
                raise ValueError(
                    f"card says {self.parameters} parameters, which no DnCNN of {self.channels} channels has"
                )
            return self
        if not (self.parameters or self.field_of_view):
            return self
        net = self.build_model_meta()  # shapes only: a 1024-channel card allocates nothing
        n = count_parameters(net)
        if self.parameters and n != self.parameters:
            raise ValueError(
                f"card says {self.parameters} parameters but its network ({self.network}) has {n}"
            )
        fov = field_of_view(net)
        if self.field_of_view and fov != self.field_of_view:
            raise ValueError(
                f"card says a field of view of {self.field_of_view} px but its network ({self.network}) "
                f"has {fov}"
            )
        return self

    @property
    def network(self) -> str:
        """The card's network in words, for messages."""
        if self.architecture is Architecture.unet:
            blocks = (
                f", {self.space_to_depth}x{self.space_to_depth} blocks" if self.space_to_depth > 1 else ""
            )
            return f"unet, {self.scales} scales, {self.channels} channels{blocks}"
        if self.architecture is Architecture.dncnn:
            return f"dncnn, {self.channels} channels"
        return str(self.architecture)

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

    def build_model_meta(self) -> torch.nn.Module:
        """The card's network with shapes only (no memory): for counts, shapes and size granularity."""
        with torch.device("meta"):
            return self.build_model()


def default_engine_root(source_tree: Path | None = None, prefixes: list[Path] | None = None) -> Path:
    """Where engine names are looked up: ``$SBD_ENGINE_DIR``; else the source tree's ``engines/`` (a
    checkout, an editable install); else ``<prefix>/share/sbd-stream/engines``, where a wheel puts them
    (pyproject ``[tool.setuptools.data-files]``). ``prefixes``: ``sys.prefix`` first, then the install
    scheme's data path and the user base (``pip install --user``, a Debian system Python's /usr/local).

    Why: the root was only ever ``<this file>/../../engines``, which for a wheel install is
    ``<site-packages>/engines``, a folder that never exists: ``info`` listed no engine with exit 0 and
    every command said ``no engine ...`` without naming ``SBD_ENGINE_DIR``. When no candidate exists the
    wheel's folder (the first prefix's) is returned, so messages name where engines were looked for;
    ``info`` refuses it in one line. A variable naming a missing folder or a file is refused
    (``ArtefactError``): it used to be taken as is, as if no engines were installed.
    ``source_tree`` / ``prefixes`` default to this installation's; tests pass their own folders."""
    env = os.environ.get("SBD_ENGINE_DIR")
    if env:
        root = Path(env)
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise ArtefactError(f"SBD_ENGINE_DIR={env} {what}; set it to the folder holding the engines")
        return root
    tree = source_tree if source_tree is not None else Path(__file__).resolve().parents[2] / "engines"
    if tree.is_dir():
        return tree
    if prefixes is None:
        import site
        import sys
        import sysconfig

        prefixes = [Path(sys.prefix), Path(sysconfig.get_path("data")), Path(site.getuserbase())]
    shared = [Path(prefix) / "share" / "sbd-stream" / "engines" for prefix in prefixes]
    return next((root for root in shared if root.is_dir()), shared[0] if shared else tree)


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


def is_path(engine: str | Path) -> bool:
    """``--model`` is "Engine name under engines/ or a path": a value with a path separator, or one
    starting with '.', is a path; anything else is a name under the engine root."""
    text = str(engine)
    seps = {os.sep, os.altsep or os.sep, "/"}
    return text.startswith(".") or any(sep in text for sep in seps)


def resolve_engine_dir(engine: str | Path | None) -> Path:
    """The engine folder ``engine`` names: a path (``is_path``) as given, a name under the engine root.

    Why: a name was looked up in the current folder first, so a folder there named like the default
    engine was run instead of the shipped one. A bare name that exists only in the current folder is
    still taken (as before, with a warning saying to write ``./NAME``), except the names of the
    shipped defaults, which only ever mean the engine root's."""
    if engine is None:
        engine = DEFAULT_ENGINE
    p = Path(engine)
    if is_path(engine):
        if (p / CARD_FILE).is_file():
            return p
        raise ArtefactError(f"no engine '{engine}': {p} holds no {CARD_FILE}")
    q = default_engine_root() / str(engine)
    here = (p / CARD_FILE).is_file() and p.resolve() != q.resolve()
    if (q / CARD_FILE).is_file():
        if here:
            log.warning(
                "engine '%s': using %s; write ./%s for the folder of that name here", engine, q, engine
            )
        return q
    if here and str(engine) not in (DEFAULT_ENGINE, FAST_ENGINE, QUALITY_ENGINE):
        log.warning(
            "engine '%s' is not under the engine root %s; using ./%s (write ./%s)",
            engine,
            q.parent,
            engine,
            engine,
        )
        return p
    raise ArtefactError(
        f"no engine '{engine}': {q} holds no {CARD_FILE} (engines are looked up in {q.parent}; "
        "set SBD_ENGINE_DIR to the folder holding them)"
    )


def load_card(engine_dir: Path) -> EngineCard:
    """The card of ``engine_dir``; any problem is one ``ArtefactError`` line (the first validation
    error with its field), never a FIFO read (it would block) nor pydantic's multi-line text."""
    path = engine_dir / CARD_FILE
    raw = read_regular(path)  # ArtefactError for a folder, a FIFO, an unreadable file
    try:
        card = EngineCard.model_validate_json(raw)
    except ValidationError as e:
        newer = [err for err in e.errors() if err.get("type") == "less_than_equal"]
        if any(tuple(err.get("loc", ())) == ("format_version",) for err in newer):
            raise ArtefactError(
                f"{path}: card format_version {_stated_version(raw)} is newer than this sbd-stream reads "
                f"({CARD_FORMAT_VERSION}); upgrade sbd-stream to run this engine"
            ) from e
        raise ArtefactError(f"{path} is not a valid engine card: {first_error(e)}") from e
    except ValueError as e:
        raise ArtefactError(f"{path} is not a valid engine card: {e}") from e
    if card.model_extra:
        log.warning(
            "%s: unknown card keys %s ignored (a typo, or a newer sbd-stream's card)",
            path,
            ", ".join(sorted(card.model_extra)[:8]),
        )
    return card


def _stated_version(raw: bytes | str) -> str:
    """The ``format_version`` a refused card states, for the message (``?`` if unreadable)."""
    try:
        return repr(json.loads(raw).get("format_version"))[:20]
    except (ValueError, AttributeError):
        return "?"


def first_error(e: ValidationError) -> str:
    """Pydantic's first error as ``field: message (got value)``, on one line."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    value = err.get("input")
    got = f" (got {repr(value)[:40]})" if loc and not isinstance(value, dict | list) else ""
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc + ': ' if loc else ''}{msg}{got}{more}"


def verify_file(engine_dir: Path, card: EngineCard, filename: str) -> Path:
    """Path of ``filename`` after checking it against the card's checksum.

    For a file handed on by name (TensorRT's parser); what can take bytes uses ``read_verified``."""
    read_verified(engine_dir, card.checksums, filename, card.name)
    return engine_dir / filename


def file_problem(engine_dir: Path, card: EngineCard, filename: str, verify: bool = True) -> str | None:
    """Why ``filename`` cannot be loaded (absent, unlisted, not a regular file, checksum mismatch), or
    None. ``verify``: hash it (``info``); else only look (``auto``, whose load hashes it anyway)."""
    path = engine_dir / filename
    if not path.exists():
        return f"no {filename} in the engine"
    if not path.is_file():
        return f"{filename} is not a regular file"
    expected = card.checksums.get(filename)
    if expected is None:
        return f"the card has no checksum for {filename}"
    if verify:
        try:
            actual = sha256_file(path)
        except ArtefactError as e:
            return str(e)
        if actual != expected:
            return mismatch(path, expected, actual)
    return None


def load_torch_model(engine_dir: Path, card: EngineCard | None = None) -> torch.nn.Module:
    """Build the card's network and load its verified weights, never unpickling arbitrary objects."""
    return load_torch_weights(engine_dir, card)[0]


def load_torch_weights(engine_dir: Path, card: EngineCard | None = None) -> tuple[torch.nn.Module, str]:
    """The card's network with its verified weights, and the SHA-256 of the bytes they came from.

    The bytes are read once, hashed, and loaded from memory (no second open by name); weights that do
    not fit the card's network are one ``ArtefactError`` line, not torch's list of every key."""
    card = card or load_card(engine_dir)
    data, sha = read_verified(engine_dir, card.checksums, WEIGHTS_FILE, card.name)
    path = engine_dir / WEIGHTS_FILE
    state = load_tensors(data, path)
    model = card.build_model()
    problem = state_dict_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except Exception as e:  # what the comparison above did not foresee: still one line
            problem = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if problem is not None:
        raise ArtefactError(f"{path} does not hold the card's network ({card.network}): {problem}")
    return model.eval(), sha


def write_engine(
    engine_dir: Path,
    model: torch.nn.Module,
    card: EngineCard,
    onnx: bool = True,
) -> EngineCard:
    """Save weights (and ONNX), fill in the derived card fields and checksums, write ``card.json``.

    All or nothing (``folder_swap.replace_folder``): the files are written into a staging folder inside
    ``engine_dir``, then renamed over the old ones, the card last; the folder itself (its other files,
    owner, mode) is kept. An exception midway (an ONNX export that fails, a full disk, Ctrl-C) left new
    weights under the old card and ONNX before; now it leaves the previous engine as it was."""
    from sbd_stream.engines.folder_swap import replace_folder
    from sbd_stream.engines.onnx_export import export_onnx

    model = model.eval().cpu()

    def fill(folder: Path) -> EngineCard:
        torch.save(model.state_dict(), folder / WEIGHTS_FILE)
        checksums = {WEIGHTS_FILE: sha256_file(folder / WEIGHTS_FILE)}
        if onnx:
            export_onnx(model, folder / ONNX_FILE)
            checksums[ONNX_FILE] = sha256_file(folder / ONNX_FILE)
        done = card.model_copy(
            update={
                "parameters": sum(p.numel() for p in model.parameters()),
                "field_of_view": field_of_view(model),
                "checksums": checksums,
            }
        )
        (folder / CARD_FILE).write_text(json.dumps(done.model_dump(mode="json"), indent=2) + "\n")
        return done

    return replace_folder(engine_dir, fill, renewed=(WEIGHTS_FILE, ONNX_FILE, CARD_FILE))
