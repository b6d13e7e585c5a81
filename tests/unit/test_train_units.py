"""Splits, augmentation, metrics and baselines of the training package (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.compute.normalisation import Normalisation
from training.evaluate.baselines import (
    adaptive_wiener,
    anscombe,
    inverse_anscombe,
    low_pass,
    raw,
    vst_bm3d,
    vst_nlm,
)
from training.evaluate.metrics import (
    Counts,
    DetectionSpec,
    detect_atoms,
    detection_scores,
    match_detections,
    psnr,
    ssim,
)
from training.sim.splits import SplitSpec, split_indices, split_structures
from training.sim.synthetic_data import _image
from training.train.augment import AugmentSpec, affine_params, draw_batch, sample_patches

# --- splits ----------------------------------------------------------------------------------------------


def test_split_by_structure_has_no_leaks_and_covers_everything() -> None:
    ids = np.repeat([f"s{i:03d}" for i in range(18)], 7)
    parts = split_indices(ids, SplitSpec(val_fraction=0.15, test_fraction=0.15, seed=3))
    seen = {k: set(ids[v]) for k, v in parts.items()}
    assert (
        not seen["train"] & seen["val"]
        and not seen["train"] & seen["test"]
        and not seen["val"] & seen["test"]
    )
    assert sorted(np.concatenate(list(parts.values()))) == list(range(len(ids)))
    assert len(seen["val"]) == 3 and len(seen["test"]) == 3


def test_split_is_deterministic_and_seed_dependent() -> None:
    ids = np.array([f"s{i}" for i in range(12)])
    a = split_structures(ids, SplitSpec(seed=1))
    assert a == split_structures(ids[::-1], SplitSpec(seed=1))
    assert any(split_structures(ids, SplitSpec(seed=s))["test"] != a["test"] for s in range(2, 8))


def test_split_refuses_too_few_structures() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        split_structures(np.array(["a", "a", "b"]))


# --- augmentation ----------------------------------------------------------------------------------------


def test_identity_warp_is_the_central_crop_and_a_flip_flips_it() -> None:
    img = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)
    eye = np.eye(2)[None]
    patch = sample_patches(img, eye, np.zeros((1, 2)), 32)[0, 0]
    torch.testing.assert_close(patch, img[0, 16:48, 16:48])
    flipped = sample_patches(img, np.diag([-1.0, 1.0])[None], np.zeros((1, 2)), 32)[0, 0]
    torch.testing.assert_close(flipped, img[0, 16:48, 16:48].flip(1))
    shifted = sample_patches(img, eye, np.array([[5.0, -3.0]]), 32)[0, 0]  # centres are (x, y)
    torch.testing.assert_close(shifted, img[0, 13:45, 21:53])


def test_augmented_windows_stay_inside_the_image_when_they_fit() -> None:
    spec = AugmentSpec(patch=96, rescale_prob=1.0)
    mats, centres = affine_params(np.random.default_rng(0), 200, spec, 256, 256)
    half = 0.5 * spec.patch * np.abs(mats).sum(axis=2)
    assert np.all(np.abs(centres) + half <= 128)
    scales = 1 / np.sqrt(np.abs(np.linalg.det(mats)))
    assert scales.min() >= 0.75 - 1e-9 and scales.max() <= 0.82 + 1e-9
    angles = np.degrees(np.arctan2(np.abs(mats[:, 1, 0]), np.abs(mats[:, 0, 0])))
    assert angles.max() <= 45 + 1e-6 and angles.max() > 30


def test_rotation_probability_keeps_the_native_orientation_in_the_mix() -> None:
    def angles(prob: float) -> np.ndarray:
        spec = AugmentSpec(patch=96, rotation_prob=prob, flips=False, rescale_prob=0.0)
        mats, _ = affine_params(np.random.default_rng(0), 400, spec, 256, 256)
        return np.degrees(np.arctan2(mats[:, 1, 0], mats[:, 0, 0]))

    unrotated = np.isclose(angles(0.5), 0.0, atol=1e-9).mean()
    assert 0.4 < unrotated < 0.6
    assert np.isclose(angles(1.0), 0.0, atol=1e-9).mean() == 0.0
    assert np.all(angles(0.0) == 0.0)


def test_batches_have_fresh_unbiased_poisson_noise() -> None:
    clean = torch.full((4, 64, 64), 2.0)
    spec = AugmentSpec(patch=32)
    norm = Normalisation(dose=0.45)
    x1, y1 = draw_batch(clean, np.random.default_rng(1), spec, 0.45, norm)
    x2, _ = draw_batch(clean, np.random.default_rng(2), spec, 0.45, norm)
    assert x1.shape == y1.shape == (4, 1, 32, 32)
    torch.testing.assert_close(y1, torch.full_like(y1, 2.0))
    assert not torch.equal(x1, x2)
    counts = x1 * 0.45
    assert torch.equal(counts.round(), counts.round().clamp_min(0)) and torch.allclose(
        counts, counts.round(), atol=1e-5
    )
    many = torch.cat([draw_batch(clean, np.random.default_rng(s), spec, 0.45, norm)[0] for s in range(20)])
    assert abs(float(many.mean()) - 2.0) < 0.05
    assert abs(float(many.var()) - 2.0 / 0.45) < 0.3  # Var(counts / dose) = clean / dose


# --- metrics ---------------------------------------------------------------------------------------------


def test_psnr_and_ssim_reference_values() -> None:
    clean = np.zeros((32, 32))
    clean[0, 0] = 2.0
    est = clean + 0.1
    assert psnr(clean, est) == pytest.approx(10 * np.log10(4 / 0.01))
    assert ssim(clean, clean) == pytest.approx(1.0)


def test_counts_reproduce_the_papers_figure_5_3_numbers() -> None:
    # 15 true atoms, one missed and one spurious: 14 / 15 everywhere, Jaccard 14 / 16
    s = Counts(tp=14, detected=15, truth=15).scores()
    assert s["precision"] == pytest.approx(14 / 15) and s["recall"] == pytest.approx(14 / 15)
    assert s["f1"] == pytest.approx(14 / 15) and s["jaccard"] == pytest.approx(0.875)


@pytest.fixture(scope="module")
def blob_image() -> tuple[np.ndarray, dict[str, np.ndarray], DetectionSpec]:
    img, cols = _image(np.random.default_rng(5), 96, spacing=2.4 / 0.155 * 0.6, white=True, sigma=2.0)
    return img, cols, DetectionSpec(pixel_size_A=0.155, threshold=0.02)


def test_detector_finds_every_column_of_a_clean_image(blob_image) -> None:
    img, cols, spec = blob_image
    scores = detection_scores(img, cols, spec)
    assert scores["surface"]["truth"] > 3 and scores["bulk"]["truth"] > 0
    assert scores["surface"]["f1"] == 1.0 and scores["bulk"]["f1"] == 1.0
    dark = detection_scores(2 - img, {**cols, "contrast": np.zeros_like(cols["contrast"])}, spec)
    assert dark["surface"]["f1"] == 1.0


def test_spurious_and_missing_atoms_are_charged_to_the_surface(blob_image) -> None:
    img, cols, spec = blob_image
    det = detect_atoms(img, 2, spec)
    surf_xy = cols["xy"][cols["is_surface"] & (cols["species"] == 78)]
    top = surf_xy[np.argmin(surf_xy[:, 0])]
    extra = np.vstack([det, top + np.array([-9.0, 0.0])])  # an atom in the vacuum above the particle
    c = match_detections(extra, cols, 2, spec, img.shape)
    assert c["surface"].detected == c["surface"].truth + 1 and c["surface"].tp == c["surface"].truth
    keep = np.linalg.norm(det - top, axis=1) > 3
    c = match_detections(det[keep], cols, 2, spec, img.shape)
    assert c["surface"].tp == c["surface"].truth - 1
    moved = det.copy()
    moved[~keep] -= np.array([9.0, 0.0])  # the top atom reported 9 px (1.4 A) too high: a miss and a spurious
    c = match_detections(moved, cols, 2, spec, img.shape)
    assert c["surface"].tp == c["surface"].truth - 1 and c["surface"].detected == c["surface"].truth


# --- baselines -------------------------------------------------------------------------------------------


def test_inverse_anscombe_is_unbiased_at_low_counts() -> None:
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.45, 2.0, 20.0):
        c = rng.poisson(lam, 200_000)
        assert inverse_anscombe(np.mean(anscombe(c))) == pytest.approx(lam, rel=0.03)


def test_every_classical_baseline_beats_the_raw_frame(blob_image) -> None:
    img, _, _ = blob_image
    img = img[:64, :64]
    counts = np.random.default_rng(1).poisson(img * 0.45).astype(np.float32)
    base = psnr(img, raw(counts, 0.45))
    for f in (low_pass, adaptive_wiener, vst_nlm, vst_bm3d):
        est = f(counts, 0.45)
        assert est.shape == img.shape
        assert psnr(img, est) > base + 5, f.__name__


# --- presets ---------------------------------------------------------------------------------------------


def test_presets_are_reproducible_and_the_fov_study_is_fair() -> None:
    from sbd_stream.compute.model import count_parameters, field_of_view
    from training.train.network import build_network
    from training.train.presets import TRAINING_PRESETS, preset_config

    for name in TRAINING_PRESETS:
        cfg = preset_config(name)
        if cfg.architecture == "unet":
            assert cfg.augment.patch % (2**cfg.scales * cfg.space_to_depth) == 0, name
        if name != "paper":  # reproducible from one command: a step budget, not the machine's speed
            assert cfg.max_minutes is None, name
    nets = {n: build_network(preset_config(n)) for n in ("fov53", "fov245", "fov1013")}
    params = [count_parameters(m) for m in nets.values()]
    assert max(params) / min(params) < 1.05
    assert [field_of_view(m) for m in nets.values()] == [53, 245, 1013]
    budgets = {(c.batch, c.max_steps, c.augment.model_dump_json()) for c in map(preset_config, nets)}
    assert len(budgets) == 1  # same samples, patches and augmentation for every field of view
    paper = preset_config("paper")
    assert (paper.scales, paper.channels, paper.augment.rescale_prob) == (6, 128, 1.0)
    assert paper.augment.max_rotation_deg == 45.0 and paper.augment.rotation_prob == 1.0


def test_block_unet_starts_from_the_full_resolution_engines_inner_levels() -> None:
    """transplant_to_blocks: levels 1.. of the full UNet become the block UNet's levels 0..; the new
    input conv and output conv stay fresh; the fast preset is that network at the live engine's FoV."""
    from sbd_stream.compute.model import UNet, field_of_view
    from training.train.network import _is_block_version, build_network, transplant_to_blocks
    from training.train.presets import preset_config

    torch.manual_seed(0)
    full, fresh = UNet(scales=4, channels=8), UNet(scales=3, channels=8, space_to_depth=2)
    net = UNet(scales=3, channels=8, space_to_depth=2)
    net.load_state_dict(transplant_to_blocks(full.state_dict(), fresh.state_dict()))
    for i in range(3):
        assert torch.equal(net.down[i][0].weight, full.down[i + 1][0].weight)
        assert torch.equal(net.up[i][3].weight, full.up[i][3].weight)
    assert torch.equal(net.inc[3].weight, full.down[0][3].weight)
    assert torch.equal(net.inc[0].weight, fresh.inc[0].weight) and net.inc[0].in_channels == 4
    assert torch.equal(net.outc.weight, fresh.outc.weight) and net.outc.out_channels == 4
    assert _is_block_version(["unet", 3, 16, 2], ["unet", 4, 16, 1])
    assert not _is_block_version(["unet", 4, 16, 2], ["unet", 4, 16, 1])
    assert not _is_block_version(["unet", 3, 32, 2], ["unet", 4, 16, 1])
    fast, live = preset_config("paper-fast"), preset_config("paper-live")
    assert (fast.space_to_depth, fast.scales, fast.init_from) == (2, 3, Path("sbd-unet4-paper"))
    assert abs(field_of_view(build_network(fast)) - field_of_view(build_network(live))) <= 16


# --- learning-rate schedules -------------------------------------------------------------------------


def test_cosine_schedule_decays_over_the_larger_of_the_step_and_time_budgets() -> None:
    from training.train.loop import scheduled_lr
    from training.train.presets import preset_config

    cfg = preset_config("tiny", max_steps=1000, max_minutes=10.0, lr=1e-3, min_lr=1e-6, lr_schedule="cosine")
    assert scheduled_lr(cfg, 0, 0.0) == pytest.approx(1e-3)
    assert scheduled_lr(cfg, 500, 0.0) == pytest.approx(0.5 * (1e-3 + 1e-6))  # half the steps
    assert scheduled_lr(cfg, 10, 300.0) == pytest.approx(0.5 * (1e-3 + 1e-6))  # half the time
    assert scheduled_lr(cfg, 10, 900.0) < scheduled_lr(cfg, 10, 300.0)
    assert scheduled_lr(cfg, 2000, 0.0) == pytest.approx(1e-6)  # past the budget: the floor
    no_time = cfg.model_copy(update={"max_minutes": None})
    assert scheduled_lr(no_time, 250, 1e9) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + 2**-0.5))
    assert scheduled_lr(preset_config("tiny"), 3, 1.0) is None  # plateau: the scheduler decides


def test_a_new_cosine_budget_goes_on_from_the_current_rate_to_the_new_end() -> None:
    """docs/training.md: on resume "the decay is re-timed to the new budget from the current step". The
    rate at the resume step is the run's own; the new budget's cosine from step 0 was 50 % higher there
    (audit 24: 5.0e-4 at step 1000 of 2000, 7.5e-4 at step 1001 of 3000)."""
    from training.train.loop import retime_anchor, scheduled_lr
    from training.train.presets import preset_config

    old = preset_config("tiny", max_steps=2000, lr=1e-3, min_lr=1e-6, lr_schedule="cosine")
    new = old.model_copy(update={"max_steps": 3000})
    state = {"step": 1000, "elapsed_s": 60.0}
    anchor = retime_anchor(old, new, state)
    assert anchor is not None and anchor["lr"] == pytest.approx(scheduled_lr(old, 1000, 60.0))
    rates = [scheduled_lr(new, s, 60.0, anchor) for s in range(1000, 3001, 50)]
    assert rates[0] == pytest.approx(scheduled_lr(old, 1000, 60.0))  # no jump at the resume step
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-6)
    assert scheduled_lr(new, 2000, 60.0, anchor) == pytest.approx(0.5 * (anchor["lr"] + 1e-6))  # halfway
    # a second change goes on from the first one's curve; the same budget, or the plateau, keeps none
    state2 = {"step": 2000, "elapsed_s": 120.0, "lr_anchor": anchor}
    later = retime_anchor(new, new.model_copy(update={"max_steps": 2500}), state2)
    assert later is not None and later["lr"] == pytest.approx(scheduled_lr(new, 2000, 120.0, anchor))
    assert retime_anchor(old, old, state) is None
    plateau = old.model_copy(update={"lr_schedule": "plateau"})
    assert retime_anchor(plateau, plateau.model_copy(update={"max_steps": 3000}), state) is None


def test_split_of_a_partial_file_is_the_split_of_the_whole_plan() -> None:
    """A file still being simulated holds some structures; a split over those alone would move a
    structure from training (now) to test (once complete). Drawn over the plan, it cannot."""
    plan_ids = [f"s{i:03d}-PtNp1-D0" for i in range(40)]
    full = split_structures(np.array(plan_ids))
    present = np.array([s for s in plan_ids[:15] for _ in range(3)])  # 15 structures so far, 3 images each
    parts = split_indices(present, SplitSpec(), universe=plan_ids)
    for name in ("train", "val", "test"):
        assert set(present[parts[name]]) <= set(full[name])
    assert sum(len(v) for v in parts.values()) == len(present)


def test_orientation_term_vanishes_for_an_equivariant_network_and_trains_a_lopsided_one() -> None:
    """``step_loss`` with an equivariance weight: for a network that commutes with the square's turns
    (a symmetric blur) it is the plain MSE; for one that does not (a one-sided difference) the extra term
    is positive and its gradient makes the network more nearly equivariant."""
    from training.train.loop import step_loss
    from training.train.presets import preset_config

    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    blur = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        blur.weight.copy_(torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).view(1, 1, 3, 3) / 16)
    for seed in range(4):  # whichever other orientation the step draws
        rng = np.random.default_rng(seed)
        torch.testing.assert_close(step_loss(blur, x, y, 1.0, rng), torch.nn.functional.mse_loss(blur(x), y))
    lopsided = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        lopsided.weight.copy_(torch.tensor([[0.0, 0, 0], [0, 1, 1], [0, 0, 0]]).view(1, 1, 3, 3))
    plain = torch.nn.functional.mse_loss(lopsided(x), y)
    with_term = step_loss(lopsided, x, y, 1.0, np.random.default_rng(0))
    assert with_term > 0.5 * plain  # the other orientation's error alone differs; the term adds more
    target = lopsided(x).detach()  # its own output: the plain MSE has nothing to teach it

    def trained(weight: float) -> torch.Tensor:
        net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        net.load_state_dict(lopsided.state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for seed in range(200):
            opt.zero_grad()
            step_loss(net, x, target, weight, np.random.default_rng(seed)).backward()
            opt.step()
        k = net.weight.detach()[0, 0]
        return (k[1, 2] - k[1, 0]).abs()  # left-right asymmetry of the kernel (1 at the start)

    assert trained(0.0) == 1.0
    assert trained(1.0) < 0.5
    cfg = preset_config("paper-fast-equivariant")
    assert cfg.equivariance_weight > 0 and cfg.freeze_norm_after == 0
    assert preset_config("paper-fast").equivariance_weight == 0  # the other recipes are unchanged
