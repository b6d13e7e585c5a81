"""Dose-range training, --init-from a committed engine, and the dose / pixel fields of exported cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.engines.card import load_card, load_torch_model
from training.sim.synthetic_data import write_synthetic
from training.train.augment import AugmentSpec, draw_batch
from training.train.config import TrainConfig
from training.train.export import export_run
from training.train.loop import train
from training.train.network import build_network, init_weights
from training.train.presets import preset_config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("data") / "syn.h5", n_structures=6, per_structure=4, size=64
    )


@pytest.fixture(scope="module")
def dose_run(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    out = tmp_path_factory.mktemp("runs")
    cfg = preset_config(
        "tiny",
        data=str(synthetic),
        out_dir=str(out),
        threads=1,
        augment={"dose_factors": (0.5, 2.0)},
        val_dose_factors=[0.5, 2.0],
    )
    train(cfg, resume=False)
    return cfg


def test_dose_factors_are_log_uniform_and_vacuum_reads_one() -> None:
    spec = AugmentSpec(patch=32, max_rotation_deg=0, rescale_prob=0, dose_factors=(0.5, 2.0))
    src = torch.ones(64, 64, 64)
    x, y = draw_batch(src, np.random.default_rng(0), spec, 7.2, Normalisation(dose=7.2))
    counts_per_px = x.mean((1, 2, 3))  # input = counts / that sample's expected counts: ~1 at any dose
    assert torch.allclose(counts_per_px, torch.ones(64), atol=0.05)
    assert torch.allclose(y, torch.ones_like(y), atol=1e-5)
    # the per-sample dose is visible in the input's noise: var(input) = 1 / (7.2 f)
    f = 1 / (7.2 * x.var((1, 2, 3)))
    assert 0.4 < f.min() < 0.65 and 1.6 < f.max() < 2.4
    # log-uniform: as many samples in [0.5, 1] as in [1, 2] (uniform would put 1/3 below the nominal)
    many = torch.ones(2000, 32, 32)
    x, _ = draw_batch(many, np.random.default_rng(2), spec, 7.2, Normalisation(dose=7.2))
    f = 1 / (7.2 * x.var((1, 2, 3)))
    assert 0.45 < (f < 1).float().mean() < 0.55


def test_training_over_a_dose_range_logs_each_dose_and_fills_the_card(
    dose_run: TrainConfig, tmp_path: Path
) -> None:
    vals = [json.loads(r) for r in (dose_run.run_dir / "log.jsonl").read_text().splitlines()]
    vals = [r for r in vals if "val_psnr" in r]
    assert vals and all(np.isfinite(r["val_psnr_x0.5"]) and np.isfinite(r["val_psnr_x2"]) for r in vals)
    card = export_run(dose_run.run_dir, tmp_path / "eng")
    assert card.dose_range == (0.5, 2.0)
    assert card.pixel_size_A == pytest.approx(0.155)
    assert card.normalisation.dose == pytest.approx(0.45)
    assert card.dose_e_per_A2 == pytest.approx(0.45 / 0.155**2, rel=1e-4)
    assert load_card(tmp_path / "eng").dose_e_per_A2 == pytest.approx(card.dose_e_per_A2)
    assert card.training["steps_total"] == 6


def test_export_of_an_unfinished_run_takes_dose_and_pixel_from_the_data(
    dose_run: TrainConfig, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dose_run.run_dir, run)
    (run / "summary.json").unlink()
    card = export_run(run, tmp_path / "eng")
    assert card.training["interrupted"] is True and card.training["steps"] == 6
    assert card.pixel_size_A == pytest.approx(0.155) and card.normalisation.dose == pytest.approx(0.45)


def test_export_of_a_resumed_then_stopped_run_takes_counters_from_last_pt(
    dose_run: TrainConfig, tmp_path: Path
) -> None:
    """A summary.json left by an earlier, finished segment must not describe a longer resumed run."""
    import os
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(dose_run.run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ck["state"].update(step=summary["steps"] + 40, best_step=summary["steps"] + 20)
    torch.save(ck, run / "last.pt")
    old = (run / "summary.json").stat().st_mtime - 60
    os.utime(run / "summary.json", (old, old))  # the earlier segment's summary is older than last.pt
    card = export_run(run, tmp_path / "eng")
    assert card.training["steps"] == summary["steps"] + 40 and card.training["interrupted"] is True
    assert card.training["best_step"] == summary["steps"] + 20
    assert card.training["device"] == summary["device"]  # what only the earlier summary knew is kept


def test_init_from_starts_a_new_run_from_an_engines_weights(
    dose_run: TrainConfig, synthetic: Path, tmp_path: Path
) -> None:
    engine = tmp_path / "eng"
    export_run(dose_run.run_dir, engine)
    model = load_torch_model(engine)
    ref = model.state_dict()
    params = [k for k, _ in model.named_parameters()]
    cfg = preset_config(
        "tiny", data=str(synthetic), out_dir=str(tmp_path / "runs"), name="next", threads=1, lr=0.0
    )
    cfg = cfg.model_copy(update={"init_from": engine})
    summary = train(cfg, resume=False)
    assert summary["init_from"]["engine"] == "eng" and summary["init_from"]["steps_before"] == 6
    got = torch.load(cfg.run_dir / "best.pt", weights_only=True)  # lr 0: the weights did not move
    assert params and all(torch.equal(got[k], ref[k]) for k in params)  # (norm statistics do)
    card = export_run(cfg.run_dir, tmp_path / "eng2")
    assert card.training["steps_total"] == 12 and card.training["init_from"]["path"] == str(engine)
    with pytest.raises(ValueError, match="differs"):
        init_weights(cfg.model_copy(update={"channels": cfg.channels + 1}))


def test_detector_training_preset() -> None:
    cfg = preset_config("detector")
    assert cfg.name == "sbd-unet4-detector" and str(cfg.data) == "data/detector.h5"
    assert (cfg.scales, cfg.channels) == (4, 16) and cfg.augment.dose_factors == (0.5, 2.0)
    # 256^2 working frames run as one whole-frame tile (Denoiser.plan); larger ones are tiled with a margin
    assert cfg.augment.patch == 256 and cfg.tiling.tile == 512 and cfg.tiling.margin == 48
    assert cfg.max_steps and cfg.max_minutes is None and cfg.threads == 2  # a step budget


def test_frozen_batch_norm_keeps_running_statistics_but_trains_weights(
    synthetic: Path, tmp_path: Path
) -> None:
    """freeze_norm_after: from that step on the network trains as it will run (eval-mode normalisation)."""
    cfg = preset_config("tiny", data=str(synthetic), out_dir=str(tmp_path), threads=1, freeze_norm_after=0)
    train(cfg, resume=False)
    state = torch.load(cfg.run_dir / "last.pt", weights_only=True)["model"]
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)  # never updated
    torch.manual_seed(cfg.seed)  # as train() does before building the network
    fresh = build_network(cfg).state_dict()
    weights = [k for k in state if k.endswith("weight") and state[k].ndim == 4]
    assert any(not torch.equal(state[k], fresh[k]) for k in weights)  # the convolutions did learn


def test_checkpoints_from_before_the_freeze_are_never_the_best(synthetic: Path, tmp_path: Path) -> None:
    cfg = preset_config(
        "tiny",
        data=str(synthetic),
        out_dir=str(tmp_path),
        threads=1,
        freeze_norm_after=3,
        val_dose_factors=[2.0],
    )
    summary = train(cfg, resume=False)
    log = [json.loads(r) for r in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "norm_frozen_reset_best"] == [6]
    assert summary["best_step"] == 6 and "x2" in summary["val_selection"]
    last = [r for r in log if "val_psnr" in r][-1]
    assert last["score"] == pytest.approx((last["val_psnr"] + last["val_psnr_x2"]) / 2)
