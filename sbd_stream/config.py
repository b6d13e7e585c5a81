"""Typed settings for the streaming service: one object, from a TOML file, SBD_* environment and flags.

Precedence (highest first): explicit values (CLI flags) > environment (``SBD_INGEST__ENDPOINT=...``)
> TOML file > defaults. Defaults bind and connect on 127.0.0.1 only: exposing a socket to the
facility network must be a deliberate choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from sbd_stream.compute.likelihood_config import LikelihoodConfig
from sbd_stream.compute.settings_defaults import DEFAULT_TOLERANCE, evidence_defaults  # torch-free
from sbd_stream.config_file import read_toml
from sbd_stream.config_merge import (
    check_env_names,
    check_file_names,
    merge_layer,
    no_bool,
    not_blank,
    older_policy_in_its_layer,
)

# bounded durations, counts and sizes, and the settings' enums (config_types.py, docs/service.md)
from sbd_stream.config_types import (
    MAX_TIME_S,
    BackpressurePolicy,
    Batch,
    Bytes,
    Count,
    FrameBytes,
    Frames,
    InputDialect,
    InputSocket,
    MiB,
    Pixels,
    Seconds,
    SocketMode,
    Threads,
    Upsample,
)
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD
from sbd_stream.security import CurveSettings, plain_path


def _no_bool(cls: type[BaseModel], data: Any) -> Any:
    """``no_bool``, NumPy's booleans counted as booleans: ``DetectorSettings(pixel_size_A=np.True_)`` (an
    h5py attribute handed on) was a 1 A pixel; ``isinstance(np.True_, bool)`` is False (session 35)."""
    if isinstance(data, dict) and any(isinstance(v, np.bool_) for v in data.values()):
        data = {k: bool(v) if isinstance(v, np.bool_) else v for k, v in data.items()}
    return no_bool(cls, data)


class _Section(BaseModel):
    """A settings table: unknown keys, NaN / Infinity and booleans given for numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    _numbers_not_bools = model_validator(mode="before")(_no_bool)


# Checked here, not at the engine's load: "tensorrrt" / "gpu" was three backends' errors naming no setting
Backend = Literal["auto", "tensorrt", "onnxruntime", "torch"]
Device = Annotated[str, Field(pattern=r"^(cpu|cuda)(:[0-9]+)?$")]


class WireV1Input(_Section):
    """Wire format v1: SUB to a bridge that publishes (PUB, the default), or PULL from one that PUSHes.

    PULL is the scale-out deployment (docs/scale-out-nodes.md): several ``serve`` instances PULLing
    from one PUSH sender share its frames round-robin, and ``sbd-stream merge`` re-orders their outputs.
    """

    dialect: Literal["wire-v1"] = Field("wire-v1", description="sbd-stream wire format v1")
    socket_type: InputSocket = Field(
        InputSocket.sub, description="sub from a PUB bridge, or pull from a PUSH one (scale-out)"
    )


class DectrisInput(_Section):
    """DECTRIS SIMPLON stream v1 / v2: the settings only a detector's series state machine needs.

    They live here rather than on ``IngestSettings`` so a wire-format service can't be given a
    timeout or socket type that would silently do nothing.
    """

    dialect: Literal["dectris-stream-v1", "dectris-stream-v2"] = Field(
        description="stream v1 (JSON + blob) or stream v2 (CBOR)"
    )
    socket_type: InputSocket = Field(InputSocket.pull, description="pull from a DCU, sub behind a proxy")
    series_timeout_s: Seconds = Field(10.0, gt=0, description="close a series after this silence")
    heartbeat_s: float = Field(1.0, gt=0, le=3600, description="ZMTP heartbeat; a silent peer: gone after 3x")


InputSettings = Annotated[WireV1Input | DectrisInput, Field(discriminator="dialect")]
"""One tagged variant per input family, picked by its ``dialect`` value (TOML ``[ingest.input]``)."""


class IngestSettings(_Section):
    """The receiving socket and queues (common to every dialect) plus the dialect's own ``input``."""

    endpoint: str = Field("tcp://127.0.0.1:5555", description="where detector frames come from")
    mode: SocketMode = Field(SocketMode.connect, description="connect to a bridge, or bind and wait")
    rcvhwm: Count = Field(64, ge=0, description="ZeroMQ receive high-water mark, messages (0: none)")
    max_payload_bytes: FrameBytes = Field(DEFAULT_MAX_PAYLOAD, ge=1, description="largest accepted frame")
    queue_frames: Frames = Field(64, ge=1, description="denoise queue length (frames)")
    record_queue_frames: Frames = Field(
        2048, ge=1, description="recorder queue length (items; also capped at 2 GiB): 512 lost a burst"
    )
    curve: CurveSettings = Field(default_factory=CurveSettings, description="optional CURVE (security.py)")
    input: InputSettings = Field(
        default_factory=WireV1Input, description="message format, tagged by dialect, and its settings"
    )

    @field_validator("input", mode="before")
    @classmethod
    def _default_dialect(cls, v: object) -> object:
        """``[ingest.input]`` (or ``SBD_INGEST__INPUT__*``) without ``dialect`` is the default wire-v1, as
        when the table is absent: ``socket_type = "pull"`` alone was refused ("Unable to extract tag")."""
        if isinstance(v, dict) and "dialect" not in v:
            return {"dialect": InputDialect.wire_v1.value, **v}
        return v


# --- end ingest input dialects ---


class PublishSettings(_Section):
    enabled: bool = True
    endpoint: str = Field("tcp://127.0.0.1:5556", description="where denoised frames are published")
    mode: SocketMode = SocketMode.bind
    sndhwm: Count = Field(16, ge=1, description="per-subscriber send high-water mark (messages)")
    dtype: str = Field("float32", pattern="^(float16|float32)$", description="denoised output dtype")
    queue_frames: Frames = Field(32, ge=1)
    curve: CurveSettings = Field(default_factory=CurveSettings, description="optional CURVE (security.py)")


class RecordSettings(_Section):
    enabled: bool = True
    directory: Path = Field(Path("recordings"), description="one HDF5 file per acquisition goes here")
    _plain_directory = field_validator("directory", mode="before")(plain_path)  # no NUL, no newline
    _directory_given = field_validator("directory", mode="before")(not_blank("empty: is it . on purpose?"))
    suffix: str = Field(
        ".nxs",
        pattern=r"^\.(nxs|h5)$",
        description="recording file name ending: .nxs (NeXus; hs.load(path) picks its reader by it) or .h5",
    )
    max_file_bytes: Bytes = Field(4 * 1024**3, ge=1, description="roll to a new file past this size")
    record_denoised: bool = True
    denoised_dtype: Literal["float16", "float32"] = Field(
        "float16",
        description="denoised frames on disk: float16 rounds by <= 5e-4 relative (~80 dB on the paper's "
        "metric, far below any engine's error) for 1/3 the bytes of float32 (docs/service.md)",
    )
    record_llr: bool = True
    compression: str = Field("bitshuffle-lz4", pattern="^(bitshuffle-lz4|gzip|none)$")
    flush_every: Count = Field(1, ge=1, description="flush to disk every N frames (1 = each frame)")
    min_free_bytes: Bytes = Field(
        256 * 1024**2, ge=0, description="stop recording (disk full) when less than this is free"
    )
    idle_close_s: Seconds = Field(
        60.0, gt=0, description="close an acquisition's file when nothing was written to it for this long"
    )
    max_open_files: Count = Field(
        16, ge=1, description="most recording files open at once; the least recently used is closed first"
    )
    compress_threads: Threads = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=0,
        description="threads compressing raw frames to bitshuffle-LZ4 chunks off the writer thread "
        "(0 = the HDF5 filter compresses on the writer thread)",
    )


PAPER_PIXEL_A = 0.060
"""The paper's detector pixel at the specimen: 0.45 counts/px in vacuum at 125 e/A^2 per frame."""
PAPER_DOSE_E_PER_A2 = 125.0
"""The paper's dose per 25 ms frame (5000 e/A^2/s), electrons per A^2."""


class DetectorSettings(_Section):
    """What the detector delivers, in physical units: pixel size at the specimen and dose per frame.

    Give the dose either per area (``dose_e_per_A2``) or as counts per pixel in vacuum
    (``counts_per_px``); one derives the other through the pixel area. With neither, the paper's
    125 e/A^2 per frame is assumed (0.45 counts per 0.060 A pixel).
    """

    pixel_size_A: float = Field(PAPER_PIXEL_A, ge=1e-3, le=1e3, description="at the specimen, A (limits.py)")
    dose_e_per_A2: float | None = Field(None, gt=0, description="dose per frame, electrons per A^2")
    counts_per_px: float | None = Field(None, gt=0, description="or: counts per pixel in vacuum per frame")

    @model_validator(mode="after")
    def _one_dose(self) -> DetectorSettings:
        if self.dose_e_per_A2 is not None and self.counts_per_px is not None:
            raise ValueError("give the dose as dose_e_per_A2 or as counts_per_px, not both")
        return self

    @property
    def dose_per_area(self) -> float:
        """Electrons per A^2 per frame."""
        if self.counts_per_px is not None:
            return self.counts_per_px / self.pixel_size_A**2
        return PAPER_DOSE_E_PER_A2 if self.dose_e_per_A2 is None else self.dose_e_per_A2

    @property
    def vacuum_counts(self) -> float:
        """Expected counts per detector pixel in vacuum per frame."""
        return self.dose_per_area * self.pixel_size_A**2

    def describe(self) -> dict[str, float]:
        """What recordings and outputs carry as attributes (both forms of the dose)."""
        return {
            "pixel_size_A": self.pixel_size_A,
            "dose_e_per_A2": self.dose_per_area,
            "counts_per_px": self.vacuum_counts,
        }


class LikelihoodSettings(LikelihoodConfig, _Section):
    """Likelihood maps: on/off plus the physical detection parameters (sbd_stream/compute/likelihood.py).

    The pixel size is not a setting: maps are computed at the engine's working pixel, whatever the
    detector's sampling, and brought back to detector pixels.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, description="also compute, publish and record likelihood-ratio maps")
    pixel_size_A: float | None = Field(  # type: ignore[assignment]  # unset until at_pixel() makes the config
        None, gt=0, description="set from the engine's working pixel"
    )
    evidence_frames: int = Field(
        0,
        ge=0,
        le=16,
        description="0: score each frame's columns on its own counts (the paper's definition); N: on the "
        "summed counts of up to N other frames of the same acquisition (its batch's and the last 2N the "
        "worker kept), which the denoiser did not fit; the specimen must not change over those frames",
    )

    @model_validator(mode="before")
    @classmethod
    def _evidence_defaults(cls, data: Any) -> Any:
        """With evidence frames, other LLR defaults (compute/settings_defaults.py ``evidence_defaults``)."""
        return evidence_defaults(data) if isinstance(data, dict) else data

    def at_pixel(self, pixel_size_A: float) -> LikelihoodConfig:
        """The compute-layer config at a given pixel size (the engine's working pixel)."""
        fields = self.model_dump(exclude={"enabled", "pixel_size_A", "evidence_frames"})
        return LikelihoodConfig(pixel_size_A=pixel_size_A, **fields)


class DenoiseSettings(_Section):
    engine: Backend = Field("auto", description="backend: auto, tensorrt, onnxruntime or torch")
    model: str | None = Field(
        None, description="engine name under engines/ or a path (default: the live engine for the device)"
    )
    device: Device | None = Field(None, description="cpu or cuda[:N] (default: the best available)")
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="engine workers (default: one per listed device or visible GPU, else 1)",
    )
    devices: list[Device] | None = Field(
        None, min_length=1, description='devices the workers run on, cycled, e.g. ["cuda:0", "cuda:1"]'
    )
    threads_per_worker: Threads | None = Field(
        None, ge=1, description="CPU: intra-op threads per worker's engine (default: cores / workers)"
    )
    tile: Pixels | None = Field(None, ge=1)
    margin: Pixels | None = Field(None, ge=0)
    upsample: Upsample = Field(
        Upsample.auto, description="back to detector pixels: auto (bicubic on GPU, bilinear on CPU)"
    )
    bin_tolerance: float = Field(
        DEFAULT_TOLERANCE,
        ge=0,
        lt=0.5,
        description="largest relative misfit of k x detector pixel to the working pixel",
    )
    batch_frames: Batch = Field(
        4, ge=1, description="denoise up to B frames at once (live and offline: one default)"
    )
    batch_timeout_ms: float = Field(
        5.0, ge=0, le=MAX_TIME_S * 1000, description="or whatever arrived within T ms"
    )
    orientations: Literal[1, 2, 4, 8] = Field(1, description="engine averaged over turned frames")

    @field_validator("orientations", mode="before")
    @classmethod
    def _orientations_from_text(cls, v: object) -> object:
        """``SBD_DENOISE__ORIENTATIONS=8`` is the text ``'8'``, which a Literal of ints refused."""
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    policy: BackpressurePolicy | None = Field(
        None, description="older name of lanes.live: latest = live lane on, lossless = off (one lane)"
    )
    likelihood: LikelihoodSettings = Field(default_factory=LikelihoodSettings)


class LaneSettings(_Section):
    """The two lanes of the live service (docs/service.md "Two lanes").

    Why two: someone steering focus or the stage needs the newest frame now, not one queued behind older
    ones; the record needs every frame. The **live lane** hands the engine only the newest waiting frame
    (latency about one denoise time); the frames it skips go to the **complete lane**, denoised whenever
    nothing newer waits (and at shutdown within ``complete_timeout_s``) into the recording, not to live
    subscribers. What it cannot hold (``backlog_mb``) or finish is counted and left for ``replay --offline``.
    """

    live: bool = Field(True, description="live lane: denoise the newest frames, skip older waiting ones")
    complete: bool = Field(True, description="complete lane: skipped frames denoised when the engine is free")
    live_batch_frames: Batch = Field(
        1, ge=1, description="live lane: frames per engine call (1: the newest only; the latency is one call)"
    )
    backlog_mb: MiB = Field(
        2048.0, gt=0, description="raw frames the complete lane holds in memory; beyond: left for offline"
    )
    complete_timeout_s: Seconds = Field(
        15.0, ge=0, description="at shutdown, how long the complete lane may keep working on its backlog"
    )


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9105, ge=0, le=65535, description="Prometheus port (0 = pick a free one)")


class ViewerSettings(_Section):
    """The live viewer page (sbd_stream/sinks/viewer/server.py); a consumer of the outputs, never a stage."""

    enabled: bool = Field(False, description="serve the live viewer (sbd-stream serve --viewer)")
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535, description="viewer HTTP port (0 = pick a free one)")
    max_side: Pixels = Field(768, ge=16, description="frames are block-averaged to at most this many pixels")
    raw_ring_mb: MiB = Field(
        256.0, gt=0, description="recent raw frames kept (by reference) to pair with their denoised frame"
    )
    output_ring_mb: MiB = Field(64.0, gt=0, description="the same for denoised and LLR frames (each)")


class SupervisionSettings(_Section):
    """How often a stage's thread may die and be restarted before the service gives up (supervisor.py)."""

    max_restarts: Count = Field(5, ge=0, description="restarts allowed within restart_window_s")
    restart_window_s: Seconds = Field(60.0, gt=0, description="window over which restarts are counted")


class ServiceSettings(BaseSettings, _Section):
    """Everything `sbd-stream serve` / `replay` needs, validated once at start-up (``_Section``: no unknown
    key, NaN / Infinity or true / false for a number, as in every table)."""

    model_config = SettingsConfigDict(env_prefix="SBD_", env_nested_delimiter="__", validate_default=True)

    detector: DetectorSettings = DetectorSettings()
    ingest: IngestSettings = IngestSettings()
    publish: PublishSettings = PublishSettings()
    record: RecordSettings = RecordSettings()
    denoise: DenoiseSettings = DenoiseSettings()
    lanes: LaneSettings = LaneSettings()
    metrics: MetricsSettings = MetricsSettings()
    viewer: ViewerSettings = ViewerSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    stop_timeout_s: Seconds = Field(10.0, gt=0, description="how long a clean shutdown may take")

    @model_validator(mode="after")
    def _policy_names_the_live_lane(self) -> ServiceSettings:
        """``denoise.policy`` (older name) decides an unset ``lanes.live`` (``load_settings`` does it per
        layer first: ``config_merge.older_policy_in_its_layer``)."""
        if self.denoise.policy is not None and "live" not in self.lanes.model_fields_set:
            self.lanes.live = self.denoise.policy is BackpressurePolicy.latest
        return self

    @property
    def live_policy(self) -> BackpressurePolicy:
        """How the batcher takes frames: ``latest`` with the live lane on, else ``lossless``."""
        return BackpressurePolicy.latest if self.lanes.live else BackpressurePolicy.lossless

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


def load_settings(toml_path: Path | None = None, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """Build settings from TOML < environment < ``overrides`` (nested dicts, e.g. from CLI flags).

    The environment sits between file and flags: pydantic-settings gives init values precedence, so
    the file is merged *under* an env-only parse and flags on top.
    """
    file_data = read_toml(Path(toml_path)) if toml_path is not None else {}
    fields = ServiceSettings.model_fields
    sections = {name for name, f in fields.items() if isinstance(f.default, BaseModel)}
    check_env_names(os.environ, sections, set(fields))
    check_file_names(file_data, set(fields), str(toml_path))
    # the environment as given, not validated on its own: a flag over an invalid SBD_ value wins (it
    # was refused, and the error blamed the flag), and the merged layers are validated once, below
    env_only = EnvSettingsSource(ServiceSettings, env_prefix="SBD_", env_nested_delimiter="__")()
    # ``denoise.policy`` becomes ``lanes.live`` within its own layer (the higher layer wins)
    file_data = older_policy_in_its_layer(file_data, str(toml_path))
    env_only = older_policy_in_its_layer(env_only, "the environment")
    merged = merge_layer(
        merge_layer(file_data, env_only), older_policy_in_its_layer(overrides or {}, "flags")
    )
    checked = _MergedLayers(**merged)  # validated once, without reading the environment a second time
    return ServiceSettings.model_construct(checked.model_fields_set, **dict(checked))


class _MergedLayers(ServiceSettings):
    """``ServiceSettings`` validated from the merged layers alone: pydantic-settings would merge the
    environment into them again, table by table, and an ``SBD_DETECTOR__COUNTS_PER_PX`` under a
    ``--dose`` flag came back as "give the dose ... not both"."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        return (init_settings,)
