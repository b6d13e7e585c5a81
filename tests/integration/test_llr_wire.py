"""What docs/wire-format.md says of the ``llr`` message, checked on a real service's output (loopback).

The payload is float32 whatever ``publish.dtype`` does to ``denoised``; each column's region is painted
with its LLR and the rest is 0; centres are detector-pixel coordinates with pixel i's centre at i, so a
column found on a 4 x 4 working pixel sits at a half-integer (4 j + 1.5).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import await_subscriber, wait_until

from sbd_stream.config import load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration


RADIUS_PX = 0.7 / 0.060  # column_radius_A's default, in detector pixels


def _lattice(rng: np.random.Generator, side: int = 256, level: float = 0.45) -> np.ndarray:
    """Gaussian columns 2.2 A apart above a vacuum band, Poisson counts at the configured dose."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    clean = np.full((side, side), level, np.float32)
    for r in range(30, 150, 36):
        for c in range(30, side - 20, 36):
            clean += 3 * level * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 8.0**2))
    return rng.poisson(clean).astype(np.uint16)


def test_llr_is_float32_zero_outside_columns_with_half_pixel_centres_at_bin_4(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")  # 0.24 A: the 0.060 A detector bins 4x4
    s = load_settings(
        overrides={
            "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000, "dtype": "float16"},
            "record": {"enabled": False},
            "metrics": {"enabled": False},
            "lanes": {"live": False},
            # the tiny engine has random weights: a low threshold makes sure it reports columns at all
            "denoise": {"likelihood": {"enabled": True, "threshold": 0.001}},
        }
    )
    ctx = zmq.Context.instance()
    pipe = build_pipeline(s, den, source=None, context=ctx)
    pipe.start()
    assert pipe.publisher is not None
    col = Collector(pipe.publisher.endpoint, context=ctx).start()
    try:
        await_subscriber(pipe.publisher, col)
        data = _lattice(np.random.default_rng(3))
        pipe.handle_frame(Frame(FrameHeader("lat", 0, time.time(), data.shape, "uint16"), data))
        assert wait_until(lambda: col.frames(b"llr") and col.frames(b"denoised"), 60)
    finally:
        pipe.stop()
        col.close()
    (dn,), (llr,) = col.frames(b"denoised"), col.frames(b"llr")
    assert dn.header.dtype == "float16" and dn.data.dtype == np.float16
    assert llr.header.dtype == "float32" and llr.data.dtype == np.float32 and llr.data.shape == data.shape
    table = np.asarray(llr.header.columns, np.float64).reshape(-1, 4)
    assert llr.header.meta["n_columns"] == len(table) > 0
    assert np.all(table[:, :2] % 4 == 1.5)  # working pixel j -> detector (j + 0.5) * 4 - 0.5
    for row, c, value, _ in table:  # each centre's own 4 x 4 block carries its LLR (nearest centre wins)
        block = llr.data[int(row - 1.5) : int(row + 2.5), int(c - 1.5) : int(c + 2.5)]
        assert np.allclose(block, value, rtol=1e-5, atol=1e-3), (row, c, value)
    # painted only around centres (a region, in working pixels, brought back to detector pixels)
    yy, xx = np.nonzero(llr.data)
    far = np.min(np.hypot(yy[:, None] - table[:, 0], xx[:, None] - table[:, 1]), axis=1)
    assert far.max() <= RADIUS_PX + 2 * 4 and (llr.data == 0).any()  # 0 elsewhere: no evidence
