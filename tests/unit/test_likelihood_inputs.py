"""What the likelihood stage is given (audit library-api, defects 3, 6-9): non-finite pixels, array-likes,
vacuum levels, plateaus, and the bounds of its configuration; plus the service's path through it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sbd_stream.compute.likelihood import (
    LikelihoodConfig,
    LikelihoodStage,
    detect_columns,
    estimate_vacuum,
    likelihood_map,
)

PX = 0.24  # the shipped engines' working pixel
DOSE = 7.2  # their vacuum counts per working pixel
CENTRES = [(r, c) for r in range(80, 180, 12) for c in range(80, 180, 12)]  # 81 columns


def _lattice(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, denoised) 256 x 256 at 0.24 A: 81 bright Gaussian columns in vacuum, Poisson raw counts."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    clean = np.ones((256, 256), np.float32)
    for r, c in CENTRES:
        clean += 0.8 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.0**2))
    raw = np.random.default_rng(seed).poisson(clean * DOSE).astype(np.float32)
    return torch.from_numpy(raw), torch.from_numpy(clean * DOSE)


@pytest.fixture(scope="module")
def stage() -> LikelihoodStage:
    return LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))


@pytest.mark.parametrize("which", ["raw", "denoised"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_pixel_is_refused_by_name_with_its_count(
    stage: LikelihoodStage, which: str, value: float
):
    raw, den = _lattice()
    bad = {"raw": raw, "denoised": den}[which]
    bad[128, 128] = value
    bad[3, 7] = value
    with pytest.raises(ValueError, match=rf"^{which} has 2 non-finite \(NaN or Inf\) pixels of 65536"):
        stage(raw, den)
    with pytest.raises(ValueError, match=rf"^{which} has 2 non-finite"):
        likelihood_map(raw, den, stage.cfg)
    with pytest.raises(ValueError, match=rf"^{which} has 2 non-finite"):
        estimate_vacuum(raw, den, stage.cfg)
    if which == "denoised":
        with pytest.raises(ValueError, match=r"^denoised has 2 non-finite"):
            detect_columns(den, stage.cfg)


def test_masked_scoring_leaves_a_nan_out_and_keeps_the_other_columns(stage: LikelihoodStage):
    """Before: a NaN raw pixel made the vacuum NaN (0 of 81 columns); a NaN denoised one lost 36 of 81."""
    raw, den = _lattice()
    ref = stage(raw, den)
    assert len(ref.columns[0]) == 81
    for which in ("raw", "denoised", "both"):
        r, d = raw.clone(), den.clone()
        if which in ("raw", "both"):
            r[128, 128] = math.nan  # the centre of a column
        if which in ("denoised", "both"):
            d[128, 128] = math.nan
        res = stage(r, d, nonfinite="mask")
        assert res.vacuum.item() == pytest.approx(ref.vacuum.item())
        assert len(res.columns[0]) == 80, which  # only the column centred on the NaN
        assert bool(torch.isfinite(res.map).all()) and bool(torch.isfinite(res.columns[0].llr).all())
        assert res.columns[0].n_pixels.min() >= 1
    # a NaN away from every column: every column, each scored as before
    r = raw.clone()
    r[10, 10] = math.inf
    res = stage(r, den, nonfinite="mask")
    assert len(res.columns[0]) == 81
    torch.testing.assert_close(
        res.columns[0].llr, ref.columns[0].llr, rtol=1e-2, atol=0
    )  # vacuum: one block fewer
    # a denoised hole of 40 x 40 px: the columns outside it are still found
    d = den.clone()
    d[100:140, 100:140] = math.nan
    assert len(stage(raw, d, nonfinite="mask").columns[0]) >= 60
    with pytest.raises(ValueError, match="nonfinite must be"):
        stage(raw, den, nonfinite="ignore")  # type: ignore[arg-type]


def test_the_device_path_never_raises_on_values_and_is_unchanged_without_them(stage: LikelihoodStage):
    raw, den = _lattice()
    plain = stage.compute(raw, den)
    again = stage(raw, den)
    assert torch.equal(plain.map, again.map)
    r, d = raw.clone(), den.clone()
    r[50, 60] = math.nan
    d[128, 128] = math.inf
    masked = stage.compute(r, d)  # no exception: the batch stage calls this on every live batch
    assert masked.centres.shape[0] == 80 and bool(torch.isfinite(masked.map).all())
    everything = torch.full((1, 64, 64), math.nan)
    empty = stage.compute(everything, everything)
    assert empty.centres.shape[0] == 0 and not bool(torch.isfinite(empty.lam0).any())


def test_numpy_frames_and_every_documented_vacuum_form(stage: LikelihoodStage):
    raw, den = _lattice()
    ref = stage(raw, den, vacuum=torch.tensor([7.2]))
    assert len(ref.columns[0]) == 81
    for vac in (7.2, torch.tensor(7.2), np.float32(7.2), [7.2]):
        res = stage(raw.numpy(), den.numpy(), vacuum=vac)
        assert torch.equal(res.map, ref.map), repr(vac)
    two = stage(torch.stack([raw, raw]), torch.stack([den, den]), vacuum=[7.2, 7.0])
    assert two.vacuum.tolist() == pytest.approx([7.2, 7.0])
    with pytest.raises(ValueError, match=r"^vacuum has 3 levels for 1 frame: give one level"):
        stage(raw, den, vacuum=torch.tensor([7.2, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^vacuum has 1 non-finite level"):
        stage(raw, den, vacuum=math.nan)
    assert [len(c) for c in detect_columns(den.numpy(), stage.cfg, vacuum=7.2)] == [81]
    assert float(estimate_vacuum(raw.numpy(), den.numpy(), stage.cfg)[0]) == pytest.approx(7.2, rel=0.02)
    with pytest.raises(TypeError):
        LikelihoodStage(raw, den, vacuum=7.2)  # type: ignore[call-arg]  # the form the docs showed


def test_a_given_vacuum_level_is_floored_at_min_rate(stage: LikelihoodStage):
    """Before: vacuum 0 scored all 65,536 pixels as columns with a non-finite map."""
    raw, den = _lattice()
    flat = torch.full_like(den, DOSE)
    for level in (0.0, -1.0):
        res = stage(raw, flat, vacuum=level)
        assert res.vacuum.item() == pytest.approx(stage.cfg.min_rate)
        assert bool(torch.isfinite(res.map).all())
        assert len(res.columns[0]) <= _bound(256, stage.cfg.min_distance_px)


def _bound(side: int, m: int) -> int:
    """Columns more than m px apart: at most one per (m + 1) x (m + 1) square."""
    return math.ceil(side / (m + 1)) ** 2


def test_plateaus_give_at_most_one_column_per_min_distance_square(stage: LikelihoodStage):
    """Before: bright lines every 8 px on 256 x 256 gave 8,192 columns (every pixel of every line)."""
    m = stage.cfg.min_distance_px
    lines = np.full((256, 256), DOSE, np.float32)
    lines[:, ::8] += 3.0
    res = stage(torch.from_numpy(lines), torch.from_numpy(lines))
    pos = res.columns[0].positions
    assert 0 < len(pos) <= _bound(256, m)
    d = torch.cdist(pos, pos, p=math.inf) + torch.eye(len(pos)) * 1e9
    assert float(d.min()) > m  # no two columns within each other's window
    # a frame with no ties keeps every local maximum, as before
    raw, den = _lattice()
    assert len(stage(raw, den).columns[0]) == 81


def test_config_requires_the_working_pixel_and_bounds_every_value():
    with pytest.raises(ValidationError, match="pixel_size_A\n  Field required"):
        LikelihoodConfig()
    for bad in (
        dict(pixel_size_A=1e-4),  # allocated 4.7 GB before a MemoryError
        dict(pixel_size_A=6.0),
        dict(pixel_size_A=PX, column_radius_A=math.inf),  # OverflowError at the first use
        dict(pixel_size_A=PX, column_radius_A=1e9),  # asked for 176 GiB
        dict(pixel_size_A=PX, threshold=math.nan),
        dict(pixel_size_A=PX, vacuum_mode="fixed", vacuum_counts=math.inf),
        dict(pixel_size_A=0.01, column_radius_A=2.0),  # 200 px radius: past MAX_PX
    ):
        with pytest.raises(ValidationError):
            LikelihoodConfig(**bad)
    for px in (0.01, 0.06, 0.24, 5.0):  # the defaults hold over the whole range
        LikelihoodStage(LikelihoodConfig(pixel_size_A=px))
    LikelihoodStage(LikelihoodConfig(pixel_size_A=0.01, column_radius_A=1.25))  # the evidence default


def test_the_service_scores_a_frame_that_arrived_with_a_nan(binning_engine_dir: Path):
    """The edge replaces the NaN, then the batch stage scores the frame like its clean neighbours."""
    from sbd_stream.config import DetectorSettings, LikelihoodSettings
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.frames import Frame, FrameHeader
    from sbd_stream.service.batch import BatchStage
    from sbd_stream.service.edge import replace_invalid

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_block_A=2.0))
    rng = np.random.default_rng(3)
    data = rng.poisson(0.45, size=(2, 128, 128)).astype(np.float32)
    data[1, 64, 64] = math.nan
    frames = [Frame(FrameHeader("acq", i, time.time(), (128, 128), "float32"), data[i]) for i in range(2)]
    res = stage.process([replace_invalid(f) for f in frames])
    assert res.likelihood is not None and bool(np.isfinite(res.likelihood).all())
    assert res.vacuum is not None and bool(np.isfinite(res.vacuum).all())
    assert np.isfinite(res.denoised).all()
    # and the device path itself, handed the NaN directly (no edge), does not stop the stage
    assert stage.likelihood is not None
    raw = torch.from_numpy(data)
    cols = stage.likelihood.compute(raw[:, ::4, ::4].contiguous(), torch.full((2, 32, 32), 7.2))
    assert bool(torch.isfinite(cols.map).all())
