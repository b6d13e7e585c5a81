"""Denoised frames cast to an output's dtype (``record.denoised_dtype``, ``publish.dtype``) without
becoming inf.

float16 holds at most 65504. A denoised float32 pixel above that (a hot pixel, a bright spot summed
over a long exposure) became +inf in the file, with numpy's bare "overflow encountered in cast"
RuntimeWarning on stderr as the only trace (h5py's own conversion, used when the recorder has no
compressor pool, did the same without even that); the publisher sent the same +inf on the wire while
the recording held 65504 for that pixel. Both now apply one policy: such pixels are clipped to the
finite range (NaN stays NaN: it says something else), counted per output
(``sbd_recorded_clipped_pixels_total``, ``sbd_published_clipped_pixels_total``) and logged once per
output. For a normal frame the cost is a min and a max; the clip only runs on a frame that needs it.

The float32 -> float16 cast itself (``as_float16``): numpy's has no SIMD path on the CPUs measured
(2.1 ms per 1024^2 frame, 43 ms per K2 frame on the recorder's one writer thread, more than a 40 Hz
frame's 25 ms); torch's rounds the same way (to nearest, ties to even, subnormals, +-inf) and takes
0.3-0.6 / 6-16 ms. It runs in slices of fewer elements than ATen splits over threads, so it never
starts torch's intra-op threads from the recorder's or publisher's thread, whatever torch's thread count
(a torch engine keeps several). torch writes every NaN as one quiet NaN where numpy keeps the NaN's
payload bits, so a frame holding NaN (the min / max above say so) is cast by numpy, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from sbd_stream.metrics import Metrics

__all__ = ["PUBLISHED", "RECORDED", "Output", "StoredDtype", "as_float16"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """Which output casts: its counter and what its one log line says about it and about the other."""

    counter: str  # the attribute of ``Metrics``
    metric: str  # its exported name, named in the log line
    where: str
    other: str  # the other output and its own setting: the two differ when their dtypes do


RECORDED = Output(
    "recorded_clipped_pixels",
    "sbd_recorded_clipped_pixels_total",
    'in the recording (record.denoised_dtype = "float32" keeps them',
    "the published frames follow publish.dtype: float32 unchanged, float16 clipped the same way",
)
PUBLISHED = Output(
    "published_clipped_pixels",
    "sbd_published_clipped_pixels_total",
    'in the published frames (publish.dtype = "float32" keeps them',
    "the recording follows record.denoised_dtype",
)


class StoredDtype:
    """Casts frames to ``dtype``, clipping floats beyond its finite range first (counted, logged once)."""

    def __init__(self, dtype: np.dtype | str, metrics: Metrics, output: Output = RECORDED) -> None:
        self.dtype = np.dtype(dtype)
        self.output = output
        self.counter: Counter = getattr(metrics, output.counter)
        self.warned = False

    def __call__(self, data: np.ndarray, acq: str = "", seq: int = 0) -> np.ndarray:
        if data.dtype == self.dtype:
            return data
        nan_free = False
        if self.dtype.kind == "f" and data.dtype.kind == "f" and data.size:
            limit = float(np.finfo(self.dtype).max)
            if limit < float(np.finfo(data.dtype).max):
                lo, hi = data.min(), data.max()
                if not (lo >= -limit and hi <= limit):  # beyond the range, or NaN (which fails both)
                    data = self._clip(data, limit, acq, seq)
                nan_free = not (np.isnan(lo) or np.isnan(hi))  # numpy's min and max return NaN if any
        if nan_free and self.dtype == np.float16:
            return as_float16(data)
        return data.astype(self.dtype)

    def _clip(self, data: np.ndarray, limit: float, acq: str, seq: int) -> np.ndarray:
        n = int(np.count_nonzero(np.abs(data) > limit))  # NaN compares False: not counted, kept
        if not n:
            return data
        self.counter.inc(n)
        if not self.warned:
            self.warned = True
            o = self.output
            log.warning(
                "frame %s of %s: %d denoised pixels beyond %s's range (+-%g) were clipped to it %s; %s). "
                "Counted in %s; logged once",
                seq, acq, n, self.dtype, limit, o.where, o.other, o.metric,
            )  # fmt: skip
        return np.clip(data, -limit, limit)


TORCH_MIN = 4096
"""Frames of fewer pixels are cast by numpy (torch's per-call overhead is not worth it)."""
TORCH_SLICE = 32767
"""Elements per torch copy: under ATen's ``GRAIN_SIZE`` (32768), below which an op runs on the calling
thread only. Slicing costs ~10 % of the cast at K2 and keeps torch's OpenMP pool out of sink threads."""


def as_float16(data: np.ndarray) -> np.ndarray:
    """``data.astype(np.float16)``, bit for bit for NaN-free data (see the module docstring); through
    torch for C-contiguous, writable float32 frames of at least ``TORCH_MIN`` pixels."""
    if not (
        data.dtype == np.float32
        and data.size >= TORCH_MIN
        and data.flags.c_contiguous
        and data.flags.writeable  # torch.from_numpy warns on read-only memory
    ):
        return data.astype(np.float16)
    import torch  # the service has it loaded already; imported here so the sinks do not need it

    src = torch.from_numpy(data.reshape(-1))
    out = torch.empty(data.size, dtype=torch.float16)
    for s, o in zip(src.split(TORCH_SLICE), out.split(TORCH_SLICE), strict=True):
        o.copy_(s)
    return out.numpy().reshape(data.shape)
