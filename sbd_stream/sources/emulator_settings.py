"""Settings of the emulated detector (``sbd-stream emulate``, the demo): not part of the service's tree.

Kept apart from ``sbd_stream/config.py`` because only the emulator (sources/emulator.py, scene.py) and
the commands that start one use them; the service never reads them.

Every value is checked here, not where it is first used: a zero-sized or 16385-pixel side, an ``acq``
the wire format refuses, ``inf`` seconds, a negative seed or an unknown event each ended ``emulate`` in
a traceback from deep inside numpy, ZeroMQ or the encoder (some only after the banner).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sbd_stream.compute.noise import DEFAULT_DOSE
from sbd_stream.config import PAPER_PIXEL_A
from sbd_stream.config_types import MAX_TIME_S, MIN_RATE_HZ, Count, SocketMode
from sbd_stream.protocol import MAX_ACQ_LEN, MAX_SEQ, MAX_SIDE
from sbd_stream.sources.receiver import endpoint_problem

POOL_MAX_BYTES = 2**31
"""Most memory the pre-drawn noise frames (``pool``) may take: 2.1 GB, 72 K2 frames as uint16."""
POOL_MARGIN = 64
"""A scene's pool frames are this many pixels larger than the frame (``emulator.VACUUM_MARGIN``)."""


class EmulatorSettings(BaseModel):
    """``sbd-stream emulate`` / the demo's fake detector (sbd_stream/sources/emulator.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: SocketMode = SocketMode.bind  # before ``endpoint``: its check depends on it
    endpoint: str = "tcp://127.0.0.1:5555"
    shape: tuple[int, int] = (1024, 1024)
    dtype: Literal["uint8", "uint16"] = "uint16"
    dose: float = Field(DEFAULT_DOSE, gt=0, description="counts per detector pixel in vacuum per frame")
    pixel_size_A: float = Field(
        PAPER_PIXEL_A, gt=0, description="detector pixel; sources are resampled to it"
    )
    rate_hz: float = Field(40.0, ge=0, description="frames per second (0 = as fast as possible)")
    n_frames: int = Field(100, ge=1)
    source: Path | None = Field(
        None,
        description="simulated dataset (its images cycle, one per frame: a throughput test pattern, not a "
        "microscope) or recording (.h5); None with no scene: synthetic",
    )
    scene: Path | None = Field(None, description="scene bundle (.h5, sbd-train scenes): one specimen held")
    scene_name: str | None = Field(None, description="which scene of the bundle (default: its first)")
    drift_A_per_s: float = Field(0.5, ge=0, description="scene: specimen drift, A per second")
    drift_angle_deg: float = Field(30.0, description="scene: drift direction, degrees from +x (columns)")
    focus_nm: float = Field(7.5, description="scene: defocus at the first frame, nm (within the series)")
    focus_rate_nm_per_s: float = Field(0.2, description="scene: focus change, nm/s (bounces at the ends)")
    event_frame: int | None = Field(None, ge=0, description="scene: frame at which the event happens")
    event: Literal["vanish", "hop"] = Field("vanish", description="scene: which event variant is switched to")
    render_interval_s: float = Field(
        0.1, gt=0, description="scene: the clean image is re-rendered this often (drift, focus)"
    )
    seed: int = Field(0, ge=0)
    acq: str = Field(default_factory=lambda: f"emu-{uuid.uuid4().hex[:8]}")
    pool: int = Field(
        0, ge=0, description=">0: cycle this many pre-drawn noisy frames per clean image (scene: of vacuum)"
    )
    sndhwm: Count = Field(1000, ge=1)  # a C int: 2**31 was an OverflowError in ZeroMQ
    first_seq: int = Field(0, ge=0, le=MAX_SEQ)
    wait_subscriber_s: float = Field(
        5.0, ge=0, le=MAX_TIME_S, description="wait for a subscriber before the first frame"
    )
    keep_truth: bool = Field(False, description="keep sent frames and their expected counts (demo PSNR)")
    truth_every: int = Field(
        1, ge=1, description="with keep_truth: keep every k-th frame only (a long demo's memory stays small)"
    )
    push: bool = Field(False, description="PUSH instead of PUB: PULL peers share the frames round-robin")
    peers: int = Field(1, ge=1, description="PUSH: wait for this many PULL peers before sending")

    @field_validator("rate_hz")
    @classmethod
    def _rate(cls, v: float) -> float:
        """0 or a rate the pacing can sleep for: ``1e-11`` Hz overflowed the sleep (a traceback)."""
        if 0 < v < MIN_RATE_HZ:
            raise ValueError(f"0 (as fast as possible) or at least {MIN_RATE_HZ:g} frames per second")
        return v

    @field_validator("event_frame")
    @classmethod
    def _event_frame(cls, v: int | None, info: ValidationInfo) -> int | None:
        """An event at or after the last frame never happens: it was accepted and silently not shown."""
        n = info.data.get("n_frames")
        if v is not None and n is not None and v >= n:
            raise ValueError(f"frame {v} is never sent: the series is frames 0-{n - 1} (raise --frames)")
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: int, info: ValidationInfo) -> int:
        """Pre-drawn frames are held in memory: ``--pool 100000`` drew frames for minutes after the
        banner towards 237 GB, on a machine the service shares."""
        shape, dtype = info.data.get("shape"), info.data.get("dtype")
        if not v or shape is None or dtype is None:
            return v
        size = (shape[0] + POOL_MARGIN) * (shape[1] + POOL_MARGIN) * np.dtype(dtype).itemsize
        if v * size > POOL_MAX_BYTES:
            raise ValueError(
                f"{v} pre-drawn frames of {shape[0]}x{shape[1]} {dtype} take {v * size / 1e9:.1f} GB; "
                f"at most {POOL_MAX_BYTES / 1e9:.1f} GB ({POOL_MAX_BYTES // size} frames of this size)"
            )
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        problem = endpoint_problem(v, binds=info.data.get("mode", SocketMode.bind) is SocketMode.bind)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= side <= MAX_SIDE for side in v):
            raise ValueError(f"each side must be 1 to {MAX_SIDE} pixels (wire format v1)")
        return v

    @field_validator("acq")
    @classmethod
    def _acq(cls, v: str) -> str:
        if not (1 <= len(v) <= MAX_ACQ_LEN and v.isprintable()):
            raise ValueError(f"must be 1 to {MAX_ACQ_LEN} printable characters (wire format v1)")
        return v

    @property
    def dose_per_area(self) -> float:
        """e/A^2 per frame: counts per pixel in vacuum over the pixel's area."""
        return self.dose / self.pixel_size_A**2
