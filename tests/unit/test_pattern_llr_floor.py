"""The pattern model's LLR when the denoised frame dips to zero or below inside a column's disk.

Denoisers are not clamped, so a network output of 0 or -0.01 next to a column centre is ordinary. The
pattern model (``column_model = "pattern"``, what evidence frames use) takes the denoised pixels as the
column's rates, so such a pixel must be floored as docs/likelihood.md says ("Both rates are floored at
``min_rate``") or its ``log(x_i / lam0)`` is NaN. ``LikelihoodStage.compute`` promises it "Never raises on
values", and a NaN LLR is worse: it is painted into the map and sent in the ``llr`` header.
"""

from __future__ import annotations

import numpy as np
import torch
from likelihood_reference import reference_llr, reference_region

from sbd_stream.compute.likelihood import LikelihoodConfig, likelihood_map

VACUUM = 0.45
CENTRES = [(40, 40), (40, 88), (88, 40), (88, 88)]
BAD = {(40, 42): -0.01, (88, 90): 0.0}  # a negative and a zero denoised pixel, each inside a column's disk


def _frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    den = np.full((128, 128), VACUUM, np.float32)
    for cy, cx in CENTRES:
        den += 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2)).astype(np.float32)
    raw = rng.poisson(den).astype(np.float32)
    for (r, c), v in BAD.items():
        den[r, c] = v
        raw[r, c] = 2.0  # counts where the network says "nothing": the floored rate must still score them
    return raw, den


def test_pattern_llr_is_finite_and_floors_nonpositive_denoised_pixels_at_min_rate() -> None:
    cfg = LikelihoodConfig(
        pixel_size_A=0.24, column_model="pattern", vacuum_mode="fixed", vacuum_counts=VACUUM
    )
    raw, den = _frames()
    res = likelihood_map(raw, den, cfg)
    cols = res.columns[0]
    pos = cols.positions.numpy().astype(int)
    assert sorted(map(tuple, pos.tolist())) == CENTRES
    for bad in BAD:  # the test is only meaningful if the bad pixels are scored
        assert any(bad in map(tuple, reference_region(p, den.shape, cfg).tolist()) for p in pos)

    assert torch.isfinite(cols.llr).all(), cols.llr
    assert torch.isfinite(res.map).all()
    # equal to the value with those pixels set to min_rate (the explicit Poisson sum floors them so)
    floored = den.copy()
    for rc in BAD:
        floored[rc] = cfg.min_rate
    for p, value in zip(pos, cols.llr.tolist(), strict=True):
        want = reference_llr(raw, floored, p, VACUUM, cfg)[0]
        assert np.isclose(value, want, rtol=1e-4, atol=1e-3), (p, value, want)
    same = likelihood_map(raw, floored, cfg).columns[0]
    assert torch.equal(same.positions, cols.positions)
    assert torch.allclose(same.llr, cols.llr, rtol=1e-5, atol=1e-4)
