"""The recorder's float32 -> float16 cast through torch (audit 25 perf D1) is numpy's ``astype`` bit for bit.

numpy's cast had no SIMD path (2.1 ms per 1024^2 frame, 43 ms per K2 frame on the recorder's one writer
thread). ``as_float16`` casts through torch in slices; these tests compare raw float16 bit patterns with
``astype(np.float16)`` on every float16 value, every rounding midpoint and its neighbours, the overflow
edge (65504, 65519, 65520), +-inf, -0.0, float32 subnormals and random bit patterns; and ``StoredDtype``
with the old clip-then-astype on frames that need the clip or hold NaN with any payload.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sbd_stream.metrics import Metrics
from sbd_stream.sinks.stored_dtype import TORCH_MIN, StoredDtype, as_float16

F16_MAX = 65504.0


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16)


def _same(x: np.ndarray) -> None:
    got = as_float16(x)
    with np.errstate(over="ignore"):  # numpy's "overflow encountered in cast" for values >= 65520
        want = x.astype(np.float16)
    assert got.dtype == np.float16 and got.shape == x.shape
    g, w = _bits(got).ravel(), _bits(want).ravel()
    bad = np.flatnonzero(g != w)
    assert not bad.size, [(float(x.ravel()[i]), hex(g[i]), hex(w[i])) for i in bad[:5]]


def _edge_values() -> np.ndarray:
    """Every finite float16 and +-inf as float32, the midpoints between neighbours (exact in float32:
    the ties) and one float32 ulp either side of each, the overflow edge, float32 subnormals, -0.0."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[~np.isnan(h)]
    pos = np.sort(h[h >= 0].astype(np.float32))
    pos = pos[np.isfinite(pos)]
    mid = ((pos[:-1].astype(np.float64) + pos[1:]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))])
    special = np.array(
        [F16_MAX, 65519.0, 65519.996, 65520.0, 65536.0, 1e6, 3.4e38, np.inf, 0.0, -0.0,
         2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-26, 2.0**-14, 2.0**-14 - 2.0**-25, 1e-40, 1.4e-45],
        dtype=np.float32,
    )  # fmt: skip
    vals = np.concatenate([pos, mid, near, special])
    return np.concatenate([vals, -vals])


def test_every_float16_value_tie_and_edge_casts_as_numpy_does() -> None:
    v = _edge_values()
    assert v.size >= TORCH_MIN and np.isinf(v).any() and (np.signbit(v) & (v == 0)).any()
    _same(v)
    _same(v[: (v.size // 128) * 128].reshape(-1, 128))  # a 2-D frame, as the recorder gets
    for _ in range(3):
        _same(np.random.default_rng(len(v)).permutation(v))


@pytest.mark.parametrize("seed", range(4))
def test_random_frames_cast_as_numpy_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, size=(512, 600), dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = np.where(np.isnan(bits), np.float32(1.5), bits)  # NaN: numpy's path (its payload bits)
    _same(bits)
    scaled = (rng.standard_normal((1024, 1024)) * 10.0 ** rng.uniform(-8, 5)).astype(np.float32)
    _same(scaled)
    _same(np.abs(scaled) * 0.45)  # denoised counts: small, positive


def test_frames_torch_cannot_take_as_they_are_go_through_numpy_alike() -> None:
    x = np.random.default_rng(1).standard_normal((300, 400)).astype(np.float32) * 100
    _same(x[:, ::2])  # not contiguous
    ro = x.copy()
    ro.flags.writeable = False
    _same(ro)
    _same(x[:10, :10])  # under TORCH_MIN
    _same(x.astype(np.float64))


def test_the_cast_from_another_thread_with_several_torch_threads_is_the_same() -> None:
    x = np.random.default_rng(2).standard_normal((1100, 900)).astype(np.float32) * 1e4
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out: list[np.ndarray] = []
        t = threading.Thread(target=lambda: out.append(as_float16(x)))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(_bits(out[0]), _bits(x.astype(np.float16)))


def _old_stored(x: np.ndarray) -> np.ndarray:
    """The old ``StoredDtype('float16')``: clip beyond +-65504 (NaN kept), then numpy's cast."""
    if not (x.min() >= -F16_MAX and x.max() <= F16_MAX) and np.count_nonzero(np.abs(x) > F16_MAX):
        x = np.clip(x, -F16_MAX, F16_MAX)
    return x.astype(np.float16)


def test_stored_dtype_keeps_the_clip_and_every_nan_payload() -> None:
    rng = np.random.default_rng(3)
    m = Metrics()
    cast = StoredDtype("float16", m)
    payloads = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7FFFFFFF], np.uint32)
    for case in range(6):
        x = np.abs(rng.standard_normal((512, 512)).astype(np.float32)) * 0.45
        if case >= 1:
            edge = [7e4, -1e6, np.inf, -np.inf, F16_MAX, 65519.0, 65520.0, 0, -0.0]
            x.flat[rng.integers(0, x.size, len(edge))] = edge
        if case >= 3:
            x.flat[rng.integers(0, x.size, 6)] = payloads.view(np.float32)
        want = _old_stored(x)
        got = cast(x.copy())
        assert np.array_equal(_bits(got), _bits(want)), case
    assert m.recorded_clipped_pixels._value.get() > 0  # the clip is still counted
