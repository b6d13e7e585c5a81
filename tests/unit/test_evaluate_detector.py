"""Table 5.1 at the detector's sampling (training/evaluate_detector.py) on small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fake_sim_task


def _dataset(
    path: Path, pixel_A: float, shape: tuple[int, int], n_structures: int, surface: bool = True
) -> None:
    from training.sim.dataset import SimulatedDatasetWriter

    with SimulatedDatasetWriter(path, shape, {"preset": "test", "pixel_size_A": pixel_A}) as w:
        for s in range(n_structures):
            task = fake_sim_task(f"t{s}", f"s{s:03d}", 2, shape=shape)
            for im in task.images:
                im.meta["pixel_size_A"] = pixel_A
                yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
                im.clean[:] = 1.0 + 0.3 * np.cos(2 * np.pi * xx / (2.8 / pixel_A)) * np.cos(yy / 9.0)
                # inside the detection border, so every frame has columns to score
                im.columns["xy"] = (0.2 + 0.12 * im.columns["xy"]) * shape[0]
                im.columns["species"][::2] = 58  # Ce: a support region beside the particle's Pt
                if not surface:
                    im.columns["is_surface"][:] = False
            w.append_task(task)


def _paper_psnr_by_hand(cfg, engine_dir: Path) -> tuple[float, float]:
    """(raw, engine) mean paper PSNR over the test frames, computed here without the table's code: the
    batch stage at 0.060 A / 0.45 counts/px, counts and truth clamped to [0, 1] count."""
    from sbd_stream.compute.quality import paper_psnr
    from sbd_stream.config import DetectorSettings
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.frames import Frame, FrameHeader
    from sbd_stream.service.batch import BatchStage
    from training.evaluate.detector import load_test

    items, px = load_test(cfg)
    den = Denoiser.load(engine="torch", engine_dir=engine_dir)
    stage = BatchStage(den, DetectorSettings(pixel_size_A=px, counts_per_px=0.45), upsample="bicubic")
    raw, sbd = [], []
    for it in items:
        truth = np.clip(it.clean * 0.45, 0, 1)
        h = FrameHeader("hand", 0, 0.0, it.counts.shape, "float32")
        est = stage.process([Frame(h, it.counts.astype(np.float32))]).denoised[0].astype(np.float64)
        sbd.append(paper_psnr(np.clip(est, 0, 1), truth))
        raw.append(paper_psnr(np.clip(it.counts, 0, 1), truth))
    return float(np.mean(raw)), float(np.mean(sbd))


def test_paper_metric_clamps_counts_to_one_count_of_range() -> None:
    from training.evaluate.detector import paper_metrics

    clean = np.full((32, 32), 1.0)
    m = paper_metrics(clean, clean + 0.1, counts_per_px=0.45)
    assert m["paper_psnr"] == pytest.approx(-20 * np.log10(0.045), rel=1e-6)
    # anything above 1 count is clamped, as in the paper's code
    assert paper_metrics(clean * 3, clean * 4, counts_per_px=0.45)["paper_psnr"] == float("inf")


def test_table_runs_baselines_and_an_engine_through_the_batch_stage(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    from training.evaluate.detector import DetectorEvalConfig, evaluate_table_5_1_detector
    from training.evaluate.dose_curve import psnr_vs_dose
    from training.evaluate.markdown import table_5_1_detector_markdown

    _dataset(tmp_path / "test.h5", 0.06, (96, 96), 2)
    _dataset(tmp_path / "val.h5", 0.24, (24, 24), 8)
    # max_test_images 0: every test frame; NLM / BM3D are covered by the classical table tests
    cfg = DetectorEvalConfig(
        test=tmp_path / "test.h5", val=tmp_path / "val.h5", max_test_images=0, tune_images=1,
        slow_test_images=1, engine_kind="torch", baselines=["Raw", "Low-pass filter"],
    )  # fmt: skip
    res = evaluate_table_5_1_detector(cfg, {"tiny": binning_engine_dir}, log=lambda _s: None)
    assert [r["method"] for r in res["rows"] if r["kind"] == "classical"] == ["Raw", "Low-pass filter"]
    sbd = next(r for r in res["rows"] if r["kind"] == "sbd")
    assert sbd["geometry"]["bin"] == 4 and sbd["n_images"] == 4 == res["test_images"]
    assert res["region_losses_vs_low_pass"]["tiny"]["images_compared"] == 4
    assert {"paper_psnr", "paper_ssim", "psnr", "ssim"} <= set(sbd["metrics"])
    lp = next(r for r in res["rows"] if r["method"] == "Low-pass filter")
    raw = next(r for r in res["rows"] if r["method"] == "Raw")
    # the values, not just the keys: the same numbers as the frames denoised and scored by hand
    raw_db, sbd_db = _paper_psnr_by_hand(cfg, binning_engine_dir)
    assert raw["metrics"]["paper_psnr"]["mean"] == pytest.approx(raw_db, abs=1e-6)
    assert sbd["metrics"]["paper_psnr"]["mean"] == pytest.approx(sbd_db, abs=1e-6)
    assert sbd["metrics"]["paper_psnr"]["n"] == 4 and np.isfinite(sbd["metrics"]["paper_psnr"]["std"])
    assert 0.0 < sbd["metrics"]["paper_ssim"]["mean"] <= 1.0
    assert lp["metrics"]["paper_psnr"]["mean"] > raw["metrics"]["paper_psnr"]["mean"] + 10
    assert res["paper_margins"]["goal"]["sbd_paper_psnr"] == 42.87
    md = table_5_1_detector_markdown(res)
    assert "| tiny |" in md and "bin 4 to 0.24 A" in md
    curve = psnr_vs_dose(cfg, binning_engine_dir, factors=(0.5, 2.0), log=lambda _s: None)
    assert [r["dose_factor"] for r in curve["rows"]] == [0.5, 2.0]
    lo, hi = curve["rows"]
    assert hi["lowpass_psnr"] > lo["lowpass_psnr"]  # more dose, less noise
    # per region and surface F1 for the engine and the low-pass, its width tuned on val at each dose
    for row in curve["rows"]:
        for k in ("region_support_paper_psnr", "region_particle_paper_psnr"):
            assert np.isfinite(row[k]) and np.isfinite(row[f"lowpass_{k}"]), k
        assert "surface_f1" in row and "lowpass_surface_f1" in row  # None: no frame with such columns
    assert hi["lowpass_params"]["sigma"] <= lo["lowpass_params"]["sigma"]  # more counts, narrower blur


def test_fov_table_at_the_detector_sampling_reports_reach_in_angstrom(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    """Table 3.1 at the detector's sampling: each engine through the batch stage, FoV in A, markdown."""
    from training.evaluate.detector import DetectorEvalConfig
    from training.evaluate.fov_detector import (
        FOV_PRESETS,
        evaluate_fov_detector,
        table_3_1_detector_markdown,
    )
    from training.train.network import build_network
    from training.train.presets import preset_config

    _dataset(tmp_path / "test.h5", 0.06, (96, 96), 2)
    _dataset(tmp_path / "val.h5", 0.24, (24, 24), 8)
    cfg = DetectorEvalConfig(
        test=tmp_path / "test.h5",
        val=tmp_path / "val.h5",
        max_test_images=2,
        tune_images=1,
        engine_kind="torch",
    )
    res = evaluate_fov_detector(cfg, {"a": binning_engine_dir, "b": binning_engine_dir}, log=lambda _s: None)
    assert [r["method"] for r in res["rows"]] == ["Low-pass filter", "a", "b"]
    lp = res["rows"][0]
    assert lp["kind"] == "classical" and lp["params"]["sigma"] > 0  # tuned on the validation split
    assert set(res["region_losses_vs_low_pass"]) == {"against", "a", "b"}
    row = res["rows"][1]
    assert row["working_pixel_A"] == pytest.approx(0.24)
    assert row["field_of_view_A"] == pytest.approx(row["field_of_view_px"] * 0.24)
    assert row["n_images"] == 2 and np.isfinite(row["metrics"]["paper_psnr"]["mean"])
    _, sbd_db = _paper_psnr_by_hand(cfg, binning_engine_dir)  # the value, not just the key
    assert [r["metrics"]["paper_psnr"]["mean"] for r in res["rows"][1:]] == pytest.approx(
        [sbd_db] * 2, abs=1e-6
    )
    md = table_3_1_detector_markdown(res, "sbd-train fov-study-detector")
    assert md.count("\n| a |") == 1 and "FoV (A)" in md and "(tuned on val)" in md
    # region columns: the frames carry atomic models
    assert "support (dB)" in md and "particle (dB)" in md
    for r in res["rows"]:
        assert np.isfinite(r["metrics"]["region_support_paper_psnr"]["mean"])
    # the presets of both worlds: equal budgets, one recipe per world, reach 3 / 5 / 13 / 59 A at 0.24 A
    from sbd_stream.compute.model import count_parameters, field_of_view

    for world, presets in FOV_PRESETS.items():
        cfgs = [preset_config(p) for p in presets]
        budget = {(c.max_steps, c.batch, c.augment.patch, c.data, c.freeze_norm_after, c.lr) for c in cfgs}
        assert len(budget) == 1 and str(cfgs[0].data) == f"data/{world}.h5", budget
        reach = [field_of_view(build_network(c)) * 0.24 for c in cfgs]
        assert reach == pytest.approx([3.12, 5.04, 12.72, 58.8], abs=0.01)
        assert all(45_000 < count_parameters(build_network(c)) < 60_000 for c in cfgs)  # equal capacity
    paper = [preset_config(p) for p in FOV_PRESETS["paper"]]
    assert all(
        c.augment.right_angles and c.init_from is None for c in paper
    )  # all orientations, from scratch


def test_both_detector_tables_run_on_test_frames_without_surface_columns(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    """Issue 25: Table 3.1 at the detector's sampling raised KeyError 'surface_f1' where Table 5.1 reads
    it with .get: detection metrics exist only for frames that hold such columns. Both tables now run
    and show n/a for the missing metric."""
    from training.evaluate.detector import DetectorEvalConfig
    from training.evaluate.fov_detector import evaluate_fov_detector, table_3_1_detector_markdown

    _dataset(tmp_path / "test.h5", 0.06, (96, 96), 2, surface=False)
    _dataset(tmp_path / "val.h5", 0.24, (24, 24), 8)
    cfg = DetectorEvalConfig(
        test=tmp_path / "test.h5", val=tmp_path / "val.h5", max_test_images=2, tune_images=1,
        engine_kind="torch",
    )  # fmt: skip
    lines: list[str] = []
    res = evaluate_fov_detector(cfg, {"a": binning_engine_dir}, log=lines.append)
    m = res["rows"][-1]["metrics"]
    assert "surface_f1" not in m and "bulk_f1" in m
    assert len(lines) == 2 and all("F1 surface nan" in line for line in lines)
    md = table_3_1_detector_markdown(res, "sbd-train fov-study-detector")
    row = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "| n/a |" in row


def test_an_empty_validation_split_or_a_training_file_as_test_is_refused(tmp_path: Path) -> None:
    """Tuning baselines on no validation frames wrote tables of F1 0 with rc 0; a training set passed as
    --test scored its validation structures as held out."""
    from pydantic import ValidationError

    from training.evaluate.detector import DetectorEvalConfig, load_test, load_val
    from training.sim.dataset import EmptySplit
    from training.sim.splits import SplitSpec

    _dataset(tmp_path / "val.h5", 0.24, (32, 32), 6)
    cfg = DetectorEvalConfig(
        test=tmp_path / "val.h5", val=tmp_path / "val.h5", split=SplitSpec(val_fraction=0)
    )
    with pytest.raises(EmptySplit, match="val split holds no images"):
        load_val(cfg, 0.06)
    import h5py

    with h5py.File(tmp_path / "val.h5", "a") as f:
        f.attrs["view"] = "train"
    with pytest.raises(ValueError, match="is not a test split"):
        load_test(cfg)
    with pytest.raises(ValidationError, match="unknown 'Lowpass'; choose from Raw, Low-pass filter"):
        DetectorEvalConfig(baselines=["Lowpass"])
