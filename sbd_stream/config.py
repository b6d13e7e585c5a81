"""Typed settings for the streaming service: one object, from a TOML file, SBD_* environment and flags.

Precedence (highest first): explicit values (CLI flags) > environment (``SBD_INGEST__ENDPOINT=...``)
> TOML file > defaults. Defaults bind and connect on 127.0.0.1 only: exposing a socket to the
facility network must be a deliberate choice.
"""

from __future__ import annotations

import enum
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD
from sbd_stream.security import CurveSettings


class BackpressurePolicy(enum.StrEnum):
    """What the denoiser does when frames arrive faster than it can process them."""

    lossless = "lossless"  # queue: every frame is denoised, latency grows under overload
    latest = "latest"  # skip to the newest frame; skipped frames are counted, raw is still recorded


class SocketMode(enum.StrEnum):
    connect = "connect"
    bind = "bind"


# --- DECTRIS input dialects (issue 8, sbd_stream/ingest_dectris.py) ---
class InputDialect(enum.StrEnum):
    wire_v1 = "wire-v1"  # sbd-stream wire format v1 (sbd_stream/protocol.py)
    dectris_v1 = "dectris-stream-v1"  # DECTRIS SIMPLON stream v1: multipart JSON + blob
    dectris_v2 = "dectris-stream-v2"  # DECTRIS stream v2: CBOR


class InputSocket(enum.StrEnum):
    pull = "pull"  # DECTRIS DCUs send with PUSH
    sub = "sub"  # behind a fan-out proxy (wire format v1 always uses SUB)


# --- end DECTRIS input dialects ---


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("tcp://127.0.0.1:5555", description="where detector frames come from")
    mode: SocketMode = Field(SocketMode.connect, description="connect to a bridge, or bind and wait")
    rcvhwm: int = Field(64, ge=0, description="ZeroMQ receive high-water mark, messages (0: none)")
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD, ge=1, description="largest accepted frame")
    queue_frames: int = Field(64, ge=1, description="denoise queue length (frames)")
    record_queue_frames: int = Field(512, ge=1, description="recorder queue length (frames)")
    curve: CurveSettings = Field(default_factory=CurveSettings, description="optional CURVE (security.py)")
    dialect: InputDialect = Field(InputDialect.wire_v1, description="input message format")
    socket_type: InputSocket = Field(InputSocket.pull, description="DECTRIS dialects: pull or sub")
    series_timeout_s: float = Field(10.0, gt=0, description="DECTRIS: close a series after this silence")


class PublishSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    endpoint: str = Field("tcp://127.0.0.1:5556", description="where denoised frames are published")
    mode: SocketMode = SocketMode.bind
    sndhwm: int = Field(16, ge=1, description="per-subscriber send high-water mark (messages)")
    dtype: str = Field("float32", pattern="^(float16|float32)$", description="denoised output dtype")
    queue_frames: int = Field(32, ge=1)
    curve: CurveSettings = Field(default_factory=CurveSettings, description="optional CURVE (security.py)")


class RecordSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    directory: Path = Field(Path("recordings"), description="one HDF5 file per acquisition goes here")
    max_file_bytes: int = Field(4 * 1024**3, ge=1, description="roll to a new file past this size")
    record_denoised: bool = True
    record_llr: bool = True
    compression: str = Field("bitshuffle-lz4", pattern="^(bitshuffle-lz4|gzip|none)$")
    flush_every: int = Field(1, ge=1, description="flush to disk every N frames (1 = each frame)")
    min_free_bytes: int = Field(
        256 * 1024**2, ge=0, description="stop recording (disk full) when less than this is free"
    )


class DenoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: str = Field("auto", description="backend: auto, tensorrt, onnxruntime or torch")
    model: str | None = Field(None, description="engine name under engines/ or a path (default: shipped)")
    device: str | None = Field(None, description="cpu or cuda[:N] (default: the best available)")
    tile: int | None = None
    margin: int | None = None
    dose: float | None = Field(None, gt=0, description="counts per pixel in vacuum (default: card)")
    batch_frames: int = Field(4, ge=1, description="denoise up to B frames at once")
    batch_timeout_ms: float = Field(5.0, ge=0, description="or whatever arrived within T ms")
    policy: BackpressurePolicy = BackpressurePolicy.lossless
    likelihood: bool = Field(False, description="also compute and publish likelihood-ratio maps")
    likelihood_params: dict[str, Any] = Field(
        default_factory=dict, description="LikelihoodConfig fields, e.g. pixel_size_A, column_radius_A"
    )


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9105, ge=0, le=65535, description="Prometheus port (0 = pick a free one)")


class ViewerSettings(BaseModel):
    """The live viewer page (sbd_stream/viewer.py); a consumer of the outputs, never a stage."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="serve the live viewer (sbd-stream serve --viewer)")
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535, description="viewer HTTP port (0 = pick a free one)")


class ServiceSettings(BaseSettings):
    """Everything `sbd-stream serve` / `replay` needs, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SBD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    ingest: IngestSettings = IngestSettings()
    publish: PublishSettings = PublishSettings()
    record: RecordSettings = RecordSettings()
    denoise: DenoiseSettings = DenoiseSettings()
    metrics: MetricsSettings = MetricsSettings()
    viewer: ViewerSettings = ViewerSettings()
    stop_timeout_s: float = Field(10.0, gt=0, description="how long a clean shutdown may take")

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


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(toml_path: Path | None = None, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """Build settings from TOML < environment < ``overrides`` (nested dicts, e.g. from CLI flags).

    The environment sits between file and flags: pydantic-settings gives init values precedence, so
    the file is merged *under* an env-only parse and flags on top.
    """
    file_data: dict[str, Any] = {}
    if toml_path is not None:
        with open(toml_path, "rb") as fh:
            file_data = tomllib.load(fh)
    env_only = ServiceSettings().model_dump(exclude_unset=True)
    merged = _deep_merge(_deep_merge(file_data, env_only), overrides or {})
    return ServiceSettings(**merged)
