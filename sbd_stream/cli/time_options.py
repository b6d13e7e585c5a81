"""Upper bounds of the live commands' time options (``--wait``, ``--rate``), checked before anything starts.

A finite but huge value overflowed where it was used: ``emulate --wait 1e10`` in ZeroMQ's poll,
``--rate 1e-11`` in the emulator's pacing sleep (a traceback after the banner, exit 1). The bounds are
``config_types.MAX_TIME_S`` / ``config_types.MIN_RATE_HZ``, stated again here because the CLI imports the
settings (pydantic) lazily; tests/e2e/test_time_bounds.py checks that they agree.
"""

from __future__ import annotations

import math

__all__ = ["MAX_WAIT_S", "MIN_RATE_HZ", "rate_problem", "wait_problem"]

MAX_WAIT_S = 1e6  # config_types.MAX_TIME_S, ~11.6 days
MIN_RATE_HZ = 1e-6  # config_types.MIN_RATE_HZ: a frame every 1e6 s


def wait_problem(wait: float) -> str | None:
    """A ``--wait`` too long to wait for (``inf`` / NaN are left to the settings' "finite" message)."""
    if math.isfinite(wait) and wait > MAX_WAIT_S:
        return f"--wait must be at most {MAX_WAIT_S:g} s (~11.6 days), got {wait:g}"
    return None


def rate_problem(rate: float) -> str | None:
    """What is wrong with an emulated ``--rate``: 0 (as fast as possible) or 1e-6 Hz and up."""
    if math.isfinite(rate) and (rate == 0 or rate >= MIN_RATE_HZ):
        return None
    return (
        f"--rate must be a number of frames per second >= 0 (0: as fast as possible; otherwise at least "
        f"{MIN_RATE_HZ:g}, a frame every {1 / MIN_RATE_HZ:g} s), got {rate:g}"
    )
