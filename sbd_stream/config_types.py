"""The settings' value types: bounded durations, counts and sizes (pydantic type aliases) and enums.

Why bounded (docs/service.md): Python's waits overflow past ~9.2e9 s, ZeroMQ's C ints past 2**31 (ms:
~2.1e6 s), so a finite but huge value (stop_timeout_s = 1e10, rcvhwm = 2**31) was a traceback and exit 1
(after `serve`'s banner, or at shutdown) instead of a refusal naming the setting. One alias per line: a
tuple assignment makes them plain variables to a type checker, not type aliases.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import Field

from sbd_stream.protocol import MAX_SIDE

MAX_TIME_S = 1e6  # ~11.6 days
MIN_RATE_HZ = 1.0 / MAX_TIME_S  # the slowest rate the emulator paces (0: as fast as possible)
Seconds = Annotated[float, Field(le=MAX_TIME_S)]
"""A duration setting (its own ``Field`` adds the lower bound); milliseconds: ``le=MAX_TIME_S * 1000``."""
Count = Annotated[int, Field(le=2**31 - 1)]  # C int
Bytes = Annotated[int, Field(le=2**63 - 1)]  # int64
Frames = Annotated[int, Field(le=100_000)]  # queue
Batch = Annotated[int, Field(le=1024)]  # engine call
Pixels = Annotated[int, Field(le=MAX_SIDE)]
FrameBytes = Annotated[int, Field(le=MAX_SIDE**2 * 4)]  # 1 GiB
Threads = Annotated[int, Field(le=1024)]
MiB = Annotated[float, Field(le=2.0**30)]  # at most 1 PiB


class BackpressurePolicy(enum.StrEnum):
    """What the denoiser does when frames arrive faster than it can process them."""

    lossless = "lossless"  # queue: every frame is denoised, latency grows under overload
    latest = "latest"  # skip to the newest frame; skipped frames are counted, raw is still recorded


class SocketMode(enum.StrEnum):
    connect = "connect"
    bind = "bind"


# --- ingest input dialects (one receiver, sbd_stream/sources/receiver.py) ---
class InputDialect(enum.StrEnum):
    """Every input message format the receiver has a plug-in for (the CLI's ``--dialect`` choices)."""

    wire_v1 = "wire-v1"  # sbd-stream wire format v1 (sbd_stream/protocol.py)
    dectris_v1 = "dectris-stream-v1"  # DECTRIS SIMPLON stream v1: multipart JSON + blob
    dectris_v2 = "dectris-stream-v2"  # DECTRIS stream v2: CBOR


class InputSocket(enum.StrEnum):
    pull = "pull"  # DECTRIS DCUs send with PUSH
    sub = "sub"  # a PUB bridge (wire format v1 default) or a DECTRIS fan-out proxy


class Upsample(enum.StrEnum):
    """How denoised working-pixel frames return to detector pixels (compute/binning.py says why)."""

    auto = "auto"  # bicubic on a GPU; bilinear on a CPU, where bicubic costs 1/6 of the 40 Hz budget
    bicubic = "bicubic"  # ~64 dB from the clean frame at 4 x 4 (paper metric), 4 ms / 1024^2 on 2 cores
    bilinear = "bilinear"  # ~55 dB, 0.8 ms: still 15 dB below a denoiser's error
