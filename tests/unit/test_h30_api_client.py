"""sbd-stream from a notebook, as the docs show it (audit h30, api-client): the defects a researcher hit.

Each was silent or unreadable: ``likelihood=LikelihoodSettings(vacuum_mode="fixed", ...)``
(docs/likelihood.md's own recipe) returned no maps, and through ``denoise_frames`` a bare
``AssertionError``, because the settings' ``enabled`` defaults to False; a refused keyword value
printed pydantic's four-line dump with a URL; a list of frames of different sizes gave numpy's
"inhomogeneous shape"; a bool or complex torch tensor was denoised by ``Denoiser.denoise`` (0 / 1
counts; the imaginary part dropped) where the same numpy array is refused; the documented
``SamplingError`` could not be imported from where the examples import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.compute import binning
from sbd_stream.config import LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service import frames as frames_api
from sbd_stream.service.frames import FrameDenoiser, denoise_frames


def _counts(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(0.45, shape).astype(np.uint16)


@pytest.fixture(scope="module")
def binning_denoiser(binning_engine_dir: Path) -> Denoiser:
    """The tiny engine at 0.24 A, 7.2 counts per working pixel: 0.060 A frames bin 4 x 4."""
    return Denoiser.load("torch", binning_engine_dir, device="cpu")


FIXED = {"vacuum_mode": "fixed", "vacuum_counts": 0.45}


def test_likelihood_settings_given_switch_the_maps_on(binning_denoiser: Denoiser) -> None:
    fd = FrameDenoiser(
        0.060,
        counts_per_px=0.45,
        orientations=1,
        likelihood=LikelihoodSettings(**FIXED),
        denoiser=binning_denoiser,
    )
    res = fd.process(_counts((2, 128, 128)))
    assert res.likelihood is not None and res.likelihood.shape == (2, 128, 128)
    assert res.columns is not None and len(res.columns) == 2
    assert fd.stage.likelihood is not None and fd.stage.likelihood.cfg.vacuum_mode == "fixed"


def test_denoise_frames_returns_the_map_for_likelihood_settings(binning_engine_dir: Path) -> None:
    frames = _counts((1, 128, 128), seed=1)
    kw = {"counts_per_px": 0.45, "orientations": 1, "model": binning_engine_dir, "engine": "torch"}
    den, lik = denoise_frames(frames, 0.060, likelihood=LikelihoodSettings(**FIXED), **kw)
    assert den.shape == lik.shape == (1, 128, 128)
    off = denoise_frames(frames, 0.060, likelihood=LikelihoodSettings(enabled=False), **kw)
    assert isinstance(off, np.ndarray) and np.array_equal(off, den)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"counts_per_px": -1.0}, "counts_per_px=-1.0"),
        ({"counts_per_px": 0.45, "orientations": 3}, "orientations=3"),
        ({"counts_per_px": 0.45, "engine": "cuda"}, "engine='cuda'"),
        ({"counts_per_px": 0.45, "dose_e_per_A2": 125.0}, "not both"),
    ],
)
def test_a_refused_keyword_is_one_line_naming_it(kw: dict, name: str, binning_denoiser: Denoiser) -> None:
    with pytest.raises(ValueError) as err:
        FrameDenoiser(0.060, denoiser=binning_denoiser, **kw)
    msg = str(err.value)
    assert name in msg and "\n" not in msg and "pydantic" not in msg


def test_a_list_of_frames_of_different_sizes_is_refused_naming_the_shapes(binning_denoiser: Denoiser) -> None:
    fd = FrameDenoiser(0.060, counts_per_px=0.45, orientations=1, denoiser=binning_denoiser)
    with pytest.raises(ValueError, match=r"different shapes \[\(64, 64\), \(96, 80\)\].*call once per shape"):
        fd([_counts((64, 64)), torch.from_numpy(_counts((96, 80)).astype(np.float32))])


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_denoiser_refuses_tensors_that_hold_no_counts(dtype: torch.dtype, binning_denoiser: Denoiser) -> None:
    frames = torch.from_numpy(_counts((1, 32, 32)).astype(np.int64)).to(dtype)
    with pytest.raises(ValueError, match=f"dtype {dtype}: expected counts"):
        binning_denoiser.denoise(frames)


def test_sampling_error_is_importable_where_the_examples_import(binning_denoiser: Denoiser) -> None:
    sampling_error = frames_api.SamplingError
    assert sampling_error is binning.SamplingError and "SamplingError" in frames_api.__all__
    with pytest.raises(sampling_error, match=r"0\.3 A"):  # coarser than 0.24 A (0.07 is now resampled)
        FrameDenoiser(0.3, counts_per_px=0.45, denoiser=binning_denoiser)
