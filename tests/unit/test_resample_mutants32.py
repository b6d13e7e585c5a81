"""Mutation round of session 32 on ``compute/resample.py``: what the area reference tests left open.

Why: the periodic block product is taken only where a ratio repeats exactly (``period``), up to
``PERIOD_MAX`` working pixels, and its plans are cached per (side, ratio, device). A tolerance too loose
in ``period`` served a ratio just off a period with a block that drifts from the frame's pixel grid; an
off-by-one in the period search silently sent p = 24 to the slow gathers; a cache keyed without the
device hands a CPU plan to a CUDA frame (a device mismatch at the first product). Each is pinned here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_resample_area_reference import frames, reference

from sbd_stream.compute.resample import PERIOD_MAX, axis_plan, period, rebin_area


@pytest.mark.parametrize("r", [2.4 + 1e-5, 2.4 - 3e-6, 1.2 + 2e-6])
def test_a_ratio_just_off_a_short_period_takes_the_gathers_and_equals_the_reference(r: float) -> None:
    """A calibrated factor a few ppm off 12 / 5 has no period over the side: no plan, the exact result."""
    x = frames((61, 97), seed=11)
    assert axis_plan(61, r) is None and axis_plan(97, r) is None
    np.testing.assert_allclose(rebin_area(x, r).numpy(), reference(x.numpy(), r), rtol=1e-6, atol=1e-6)


def test_the_longest_period_served_is_period_max() -> None:
    """p = PERIOD_MAX is served by the block product, p = PERIOD_MAX + 1 is not."""
    longest = (PERIOD_MAX + 1) / PERIOD_MAX
    assert period(longest, 4096) == (PERIOD_MAX, PERIOD_MAX + 1)
    assert period((PERIOD_MAX + 2) / (PERIOD_MAX + 1), 4096) is None
    x = frames((100, 77), seed=5)
    plan = axis_plan(100, longest)
    assert plan is not None and plan.p == PERIOD_MAX
    np.testing.assert_allclose(
        rebin_area(x, longest).numpy(), reference(x.numpy(), longest), rtol=1e-6, atol=1e-6
    )


def test_a_plan_is_cached_per_device() -> None:
    """The same side and ratio on another device gets that device's weights, never the CPU's cached ones
    (``meta``: a device every build of torch has, standing in for CUDA here)."""
    cpu = axis_plan(131, 2.4, "cpu")
    other = axis_plan(131, 2.4, "meta")
    assert cpu is not None and other is not None
    assert cpu.block.device.type == "cpu" and cpu.tail.device.type == "cpu"
    assert other.block.device.type == "meta" and other.tail.device.type == "meta"


def test_a_plan_is_cached_per_ratio() -> None:
    """Two ratios on one side in a row each get their own plan (and their own result)."""
    x = frames((96, 96), seed=9)
    for r in (2.4, 1.2, 2.4, 5 / 3):
        plan = axis_plan(96, r)
        assert plan is not None and abs(plan.q / plan.p - r) < 1e-12
        np.testing.assert_allclose(rebin_area(x, r).numpy(), reference(x.numpy(), r), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("r", [2.4, 0.24 / 0.144])
def test_a_frame_off_the_cpu_is_resampled_with_its_own_devices_plan_and_buffer(r: float) -> None:
    """A frame on another device (``meta`` here, CUDA in service) gets that device's plan and a buffer
    there, never the CPU's per-thread scratch: products across devices fail."""
    y = rebin_area(torch.empty(2, 61, 97, device="meta", dtype=torch.uint16), r)
    assert y.device.type == "meta" and y.dtype == torch.float32
    assert tuple(y.shape) == (2, math.ceil(61 / r - 1e-9), math.ceil(97 / r - 1e-9))
