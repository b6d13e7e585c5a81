"""The vacuum estimator's choice and statistics against the module docstring's definitions, on small
frames built so that every value is known (a mutation round, h29b, found them unpinned): which blocks are
chosen (the ``vacuum_fraction`` flattest, the k-th included), each statistic's formula over its bound,
the frame's border, the masked rule, and NaN where a statistic is undefined.

4 px blocks (``vacuum_block_A`` 4 at 1 A/px) on 16 x 16 frames: 16 blocks, 4 of them chosen at 0.25."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbd_stream.compute.likelihood import LikelihoodConfig
from sbd_stream.compute.vacuum import BORDER_BLOCKS, VacuumBlocks, Z, vacuum_blocks

S = 4
CFG = LikelihoodConfig(pixel_size_A=1.0, vacuum_block_A=float(S), vacuum_fraction=0.25)


def _checker(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((yy + xx) % 2 * 2 - 1).to(torch.float32)


def _per_block(values: list[float], nb: int = 4) -> torch.Tensor:
    """(1, nb*S, nb*S): block b (row-major) filled with values[b]."""
    v = torch.tensor(values, dtype=torch.float32).reshape(nb, nb)
    return v.repeat_interleave(S, 0).repeat_interleave(S, 1)[None]


def _ranked(level: float = 2.0) -> torch.Tensor:
    """Denoised frame whose block b has variance (0.01 (b + 1))^2 * level: blocks 0-3 the flattest."""
    amp = _per_block([0.01 * (b + 1) for b in range(16)])
    return level + amp * math.sqrt(level) * _checker(16, 16)[None]


def _wilson_hilferty(dof: float) -> float:
    """chi-square / dof passed with probability ~1e-5 (the docstring's bound, normal quantile Z)."""
    return (1 - 2 / (9 * dof) + Z * math.sqrt(2 / (9 * dof))) ** 3


def test_the_flattest_fraction_of_blocks_is_chosen_the_kth_included() -> None:
    raw = _per_block([float(b + 1) for b in range(16)])  # block b's raw level: b + 1
    vb = vacuum_blocks(CFG, [raw], _ranked())
    assert float(vb.levels[0][0]) == pytest.approx((1 + 2 + 3 + 4) / 4)  # blocks 0-3, not 3 nor 5


def test_spread_grain_and_texture_are_their_definitions_over_their_bounds() -> None:
    rng = np.random.default_rng(3)
    raw_np = rng.poisson(5.0, (16, 16)).astype(np.float64)
    vb = vacuum_blocks(CFG, [torch.from_numpy(raw_np).to(torch.float32)[None]], _ranked())
    chosen = [raw_np[0:S, S * j : S * (j + 1)] for j in range(4)]  # blocks 0-3: the top row
    n, pixels, pairs = 4, S * S, 2 * S * (S - 1)
    means = np.array([c.mean() for c in chosen])
    level = means.mean()
    spread = means.var(ddof=1) * pixels / level / _wilson_hilferty(n - 1)
    grain = np.mean([c.var(ddof=1) for c in chosen]) / level / _wilson_hilferty(n * (pixels - 1))
    cov = []
    for c in chosen:
        d = c - c.mean()
        cov.append(((d[:, 1:] * d[:, :-1]).sum() + (d[1:, :] * d[:-1, :]).sum()) / pairs)
    texture = np.mean(cov) / level / (Z / math.sqrt(n * pairs))
    assert float(vb.levels[0][0]) == pytest.approx(level, rel=1e-6)
    assert float(vb.spread[0]) == pytest.approx(spread, rel=1e-4)
    assert float(vb.grain[0]) == pytest.approx(grain, rel=1e-4)
    assert float(vb.texture[0]) == pytest.approx(texture, rel=1e-4, abs=1e-6)


def test_rough_is_over_the_first_raw_stacks_level() -> None:
    raw = torch.full((1, 16, 16), 2.0)
    vb = vacuum_blocks(CFG, [raw, 3 * raw], _ranked())  # a frame and its summed evidence frames
    assert [float(lv[0]) for lv in vb.levels] == pytest.approx([2.0, 6.0])
    want = np.mean([(0.01 * (b + 1)) ** 2 * 2.0 for b in range(4)]) / 2.0
    assert float(vb.rough[0]) == pytest.approx(want, rel=1e-3)


def test_the_border_left_out_of_the_denoised_variance_is_two_thirds_of_a_block() -> None:
    """Texture only on the pixels just inside the border (index m and h - 1 - m): they count."""
    h = 3 * S
    m = int(BORDER_BLOCKS * S)
    ring = torch.zeros(h, h)
    ring[m, m : h - m] = ring[h - 1 - m, m : h - m] = 1
    ring[m : h - m, m] = ring[m : h - m, h - 1 - m] = 1
    den = 2.0 + 0.1 * ring * _checker(h, h)
    cfg = LikelihoodConfig(pixel_size_A=1.0, vacuum_block_A=float(S), vacuum_fraction=1.0)
    vb = vacuum_blocks(cfg, [torch.full((1, h, h), 2.0)], den[None])
    keep = torch.zeros(h, h)
    keep[m : h - m, m : h - m] = 1
    var = []
    for bi in range(3):
        for bj in range(3):
            sl = (slice(S * bi, S * bi + S), slice(S * bj, S * bj + S))
            x = den[sl][keep[sl] > 0]
            var.append(float(((x - x.mean()) ** 2).mean()))
    assert float(vb.rough[0]) == pytest.approx(np.mean(var) / 2.0, rel=1e-4) and np.mean(var) > 0


def test_a_frame_too_small_for_any_inner_pixel_keeps_all_of_them() -> None:
    den = 2.0 + 0.1 * _checker(S, S)[None]  # one block: no pixel is 2/3 of a block from the edge
    vb = vacuum_blocks(CFG, [torch.full((1, S, S), 2.0)], den)
    assert float(vb.levels[0][0]) == pytest.approx(2.0)
    assert float(vb.rough[0]) == pytest.approx(0.01 / 2.0, rel=1e-4)


def test_a_zero_level_is_min_rate_with_no_flatness_statistics() -> None:
    vb = vacuum_blocks(CFG, [torch.zeros(1, 16, 16)], torch.zeros(1, 16, 16))  # no beam, flat output
    assert float(vb.levels[0][0]) == pytest.approx(CFG.min_rate)  # float32
    assert all(math.isnan(float(x[0])) for x in (vb.spread, vb.grain, vb.texture))
    assert not bool(vb.not_flat[0])  # NaN statistics do not count


def test_spread_needs_two_chosen_blocks() -> None:
    cfg = LikelihoodConfig(pixel_size_A=1.0, vacuum_block_A=float(S), vacuum_fraction=1 / 16)
    rng = np.random.default_rng(1)
    raw = torch.from_numpy(rng.poisson(5.0, (1, 16, 16)).astype(np.float32))
    vb = vacuum_blocks(cfg, [raw], _ranked())
    assert math.isnan(float(vb.spread[0]))
    assert math.isfinite(float(vb.grain[0])) and math.isfinite(float(vb.texture[0]))


def test_masked_a_block_with_a_non_finite_raw_pixel_is_never_chosen() -> None:
    raw = _per_block([float(b + 1) for b in range(16)])
    raw[0, 1, 1] = math.nan  # in block 0, the flattest
    vb = vacuum_blocks(CFG, [raw], _ranked(), masked=True)
    assert float(vb.levels[0][0]) == pytest.approx((2 + 3 + 4 + 5) / 4)


def test_masked_fewer_finite_blocks_than_the_fraction_take_only_those() -> None:
    raw = _per_block([1.0, 2.0] + [math.nan] * 14)
    vb = vacuum_blocks(CFG, [raw], _ranked(), masked=True)
    assert float(vb.levels[0][0]) == pytest.approx(1.5)


def test_masked_a_frame_without_any_finite_count_scores_nothing() -> None:
    raw = torch.full((1, 16, 16), math.nan)
    vb = vacuum_blocks(CFG, [raw], _ranked(), masked=True)
    assert math.isnan(float(vb.levels[0][0])) and math.isnan(float(vb.rough[0]))


@pytest.mark.parametrize("which", ["spread", "grain", "texture"])
def test_each_raw_statistic_over_its_bound_alone_flags(which: str) -> None:
    values = {k: torch.tensor([0.5]) for k in ("spread", "grain", "texture")}
    values[which] = torch.tensor([1.01])
    vb = VacuumBlocks([torch.tensor([1.0])], rough=torch.tensor([0.0]), **values)
    assert bool(vb.not_flat[0])


def test_masked_no_block_finite_in_both_frames_takes_the_raw_mean_and_has_no_rough() -> None:
    raw = _per_block([1.0, 2.0, 3.0, 4.0] * 4)
    den = torch.full((1, 16, 16), math.nan)  # every block of the denoised frame masked
    vb = vacuum_blocks(CFG, [raw], den, masked=True)
    assert float(vb.levels[0][0]) == pytest.approx(2.5)  # the mean of the blocks with finite raw counts
    assert math.isnan(float(vb.rough[0])) and not bool(vb.not_flat[0])
