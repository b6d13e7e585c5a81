"""Fast Poisson counts for an emulated detector: inverse-CDF lookup of random 14-bit uniforms.

Why: numpy's Poisson sampler costs ~20-60 ms per megapixel on this project's 2 shared cores, up to
longer than a 25 ms frame, and an emulated acquisition whose specimen drifts and changes focus cannot
reuse pre-drawn noise. Here the expected counts are quantised once per rendered image to ``levels``
rates in ``[0, lam_max]`` (steps of lam_max / (levels - 1): 0.1 % of a 0.45-count vacuum for lam_max ~ 1)
and each frame needs only random bytes and one table gather (~5 ms per megapixel).

Accuracy: a count is F^-1(u) for u the midpoint of one of 2^14 equal bins, so every P(count >= k) is
within 2^-14 = 6e-5 of the Poisson value at the quantised rate; means and variances agree with the
Poisson ones to ~1e-3 relative (tested in tests/unit/test_scene.py).

Speed: the gather is bound by memory, so the table's size sets the cost: the emulator's scenes use 256
levels (a 4 MB table; 7.6 ms for an 880^2 footprint on this project's cores, 14.4 ms with 1024
levels), with ``anchor`` (the vacuum rate) placed exactly on a level. Their rates are then quantised in
steps of ~0.6 % of the vacuum: an rms error of ~7e-4 counts, 62 dB on the paper's metric (data range 1
count), far below any engine's error; the truth an emulator records is the unquantised rate.

High rates (``lam_max`` above ``TABLE_MAX_RATE``): numpy's exact sampler at the unquantised rates
instead (~25 ms for an 880^2 footprint). Why: the table holds uint8 counts, and its quantisation step
(0.6 % of the rate) grows against the Poisson spread sqrt(rate); a table that ran out of counts at 254
once capped every count there silently (300 counts/px came out as mean 254, variance 0.14). Below the
threshold the table's largest count is ~100 and its step under 5 % of a standard deviation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

U_BITS = 14
TABLE_MAX_RATE = 64.0
"""Largest ``lam_max`` drawn from the table (its counts reach ~100 of the 255 a uint8 holds); above it,
numpy's Poisson sampler draws at the exact rates."""


class PoissonTable:
    """Counts for rates in ``[0, lam_max]``: ``index(lam)`` once per image, ``draw(index, rng)`` per frame."""

    def __init__(
        self, lam_max: float, levels: int = 1024, u_bits: int = U_BITS, anchor: float | None = None
    ) -> None:
        """``anchor``: a rate that must be exact (the vacuum): ``lam_max`` is raised, at most one step
        per level below ``anchor``, until ``anchor`` is a level."""
        if not (np.isfinite(lam_max) and lam_max > 0):
            raise ValueError(f"lam_max must be positive and finite, got {lam_max}")
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        if anchor is not None and 0 < anchor <= lam_max:
            step = anchor / max(1, int(anchor / (lam_max / (levels - 1))))
            lam_max = step * (levels - 1)
        self.lam_max, self.levels, self.u_bits = float(lam_max), int(levels), int(u_bits)
        self.exact = self.lam_max > TABLE_MAX_RATE  # numpy's sampler: no table, no quantisation
        self._table = None if self.exact else _table(self.lam_max, self.levels, self.u_bits)

    def index(self, lam: np.ndarray) -> np.ndarray:
        """What ``draw`` takes for expected counts ``lam``: flat table offsets (int32; rates above
        ``lam_max`` clipped to it), or for an ``exact`` table the rates themselves (float64, >= 0)."""
        if self.exact:
            return np.clip(np.asarray(lam, np.float64), 0.0, None)
        q = np.rint(np.clip(lam, 0.0, self.lam_max) * ((self.levels - 1) / self.lam_max))
        return (q.astype(np.int32) << self.u_bits).astype(np.int32)

    def draw(self, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One frame of counts, same shape as ``index``: uint8 from the table, int64 when ``exact``."""
        if self._table is None:
            return rng.poisson(index)
        u = np.frombuffer(rng.bytes(2 * index.size), np.uint16).reshape(index.shape)
        return self._table[index + (u >> (16 - self.u_bits))]


@lru_cache(maxsize=4)
def _table(lam_max: float, levels: int, u_bits: int) -> np.ndarray:
    """Flat (levels x 2^u_bits) uint8 table: the count whose CDF bracket holds each uniform bin's midpoint
    (built once per process and rate range: ~4 MB at 256 levels, 0.2 s at lam_max 64).

    Refuses (``ValueError``) a range whose counts a uint8 cannot hold, rather than capping them."""
    rates = np.linspace(0.0, lam_max, levels)
    n_u = 1 << u_bits
    u = (np.arange(n_u) + 0.5) / n_u
    table = np.zeros((levels, n_u), np.uint8)
    p = np.exp(-rates)  # P(k), k = 0, 1, ...
    cdf = p.copy()
    for k in range(1, 256):
        if (1.0 - cdf).max() < 0.5 / n_u:
            break
        table += (u[None, :] > cdf[:, None]).astype(np.uint8)
        p = p * rates / k
        cdf = cdf + p
    else:
        raise ValueError(f"a uint8 table cannot hold Poisson counts up to rate {lam_max:g}")
    table.flags.writeable = False
    return table.ravel()


COUNT_TAIL = 1e-12
"""Per-pixel probability above which a count type is too small for a rate (``max_rate``): about once in
a million 1024^2 frames."""


def max_rate(dtype: str | np.dtype) -> float:
    """The largest Poisson rate whose count exceeds ``dtype``'s maximum with probability < ``COUNT_TAIL``
    (uint8: 159, uint16: 63751): a detector frame of that type holds such counts without clipping."""
    from scipy.special import pdtrc  # P(X > k) for X ~ Poisson(m)

    top = int(np.iinfo(np.dtype(dtype)).max)
    lo, hi = 0.0, float(top)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if pdtrc(top, mid) < COUNT_TAIL else (lo, mid)
    return lo
