"""The compute trend (python -m benchmarks.compute_trend) is measured from weights, on synthetic frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_sim_task

from sbd_stream.engines.card import sha256_file


def _test_set(path: Path, px: float = 0.06, shape: tuple[int, int] = (96, 96), structures: int = 2) -> None:
    """Structures x 2 frames (default 2 x 2 of 96^2 at the detector's 0.060 A), with atomic columns of Pt
    and Ce (particle and support regions)."""
    from training.sim.dataset import SimulatedDatasetWriter

    with SimulatedDatasetWriter(path, shape, {"preset": "test", "pixel_size_A": px}) as w:
        for s in range(structures):
            task = fake_sim_task(f"t{s}", f"s{s:03d}", 2, shape=shape)
            for im in task.images:
                im.meta["pixel_size_A"] = px
                yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
                im.clean[:] = 1.0 + 0.3 * np.cos(2 * np.pi * xx / (2.8 / px)) * np.cos(yy / 9.0)
                im.columns["xy"] = im.columns["xy"] * shape[0] / 5
                im.columns["species"][::2] = 58
            w.append_task(task)


def _paper_psnr_by_hand(test: Path, engine_dir: Path) -> float:
    """Mean paper PSNR of the engine, without the trend's or the table's scoring code: the batch stage at
    0.060 A / 0.45 counts/px, estimate and truth in counts clamped to [0, 1]."""
    from sbd_stream.compute.quality import paper_psnr
    from sbd_stream.config import DetectorSettings
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.frames import Frame, FrameHeader
    from sbd_stream.service.batch import BatchStage
    from training.evaluate.detector import DetectorEvalConfig, load_test

    items, px = load_test(DetectorEvalConfig(test=test, max_test_images=3))
    den = Denoiser.load(engine="torch", engine_dir=engine_dir)
    stage = BatchStage(den, DetectorSettings(pixel_size_A=px, counts_per_px=0.45), upsample="bicubic")
    out = []
    for it in items:
        h = FrameHeader("hand", 0, 0.0, it.counts.shape, "float32")
        est = stage.process([Frame(h, it.counts.astype(np.float32))]).denoised[0].astype(np.float64)
        out.append(paper_psnr(np.clip(est, 0, 1), np.clip(it.clean * 0.45, 0, 1)))
    return float(np.mean(out))


def _manifest(tmp_path: Path, engine_dir: Path) -> dict:
    """An engine, the same weights as a bare checkpoint continued from it, and a perturbed checkpoint."""
    same = tmp_path / "same.pt"
    shutil.copy(engine_dir / "model.pt", same)
    state = torch.load(same, map_location="cpu", weights_only=True)
    torch.save({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "off.pt")

    def stage(world: str, steps: int, fps: int, patch: int, init: Path | None = None) -> dict:
        s = {"world": world, "steps": steps, "frames_per_step": fps, "patch": patch}
        return {**s, "init_sha256": sha256_file(init)} if init else s

    return {
        "test": str(tmp_path / "test.h5"),
        "val": str(tmp_path / "val.h5"),
        "like": str(engine_dir),
        "rows": [
            {"name": "base", "engine": str(engine_dir), "stage": stage("detector", 100, 2, 64)},
            {
                "name": "same",
                "checkpoint": str(same),
                "parent": "base",
                "stage": stage("paper", 10, 4, 32, engine_dir / "model.pt"),
            },
            {
                "name": "off",
                "checkpoint": str(tmp_path / "off.pt"),
                "parent": "same",
                "stage": stage("paper", 5, 4, 32),
            },
        ],
    }


def test_trend_rows_are_scored_as_table_5_1_and_summed_along_their_lineage(
    tmp_path: Path, binning_engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import compute_trend

    _test_set(tmp_path / "test.h5")
    _test_set(tmp_path / "val.h5", 0.24, (24, 24), 8)  # the training set: its validation models tune
    manifest = _manifest(tmp_path, binning_engine_dir)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path / "results"))
    args = ["--manifest", str(tmp_path / "manifest.json"), "--max-test-images", "3", "--engine-kind", "torch"]
    assert compute_trend.main(args) == 0
    res = json.loads((tmp_path / "results" / "compute_trend.json").read_text())
    assert res["command"].startswith("python -m benchmarks.compute_trend --manifest")
    assert res["test_images"] == 3 and res["detector_pixel_A"] == pytest.approx(0.06)
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["base", "same", "off"]
    # cumulative compute along the parents: 100 x 2 x 64^2, then 10 x 4 x 32^2, then 5 x 4 x 32^2
    assert [rows[n]["steps"] for n in rows] == [100, 110, 115]
    assert [rows[n]["frames"] for n in rows] == [200, 240, 260]
    assert rows["off"]["megapixels"] == pytest.approx((200 * 64**2 + 60 * 32**2) / 1e6)
    assert rows["off"]["steps_by_world"] == {"detector": 100, "paper": 15}
    assert [s["row"] for s in rows["off"]["lineage"]] == ["base", "same", "off"]
    # the values: the engine scored by hand; its weights as a bare checkpoint score the same; other
    # weights do not
    whole = {n: r["metrics"]["paper_psnr"]["mean"] for n, r in rows.items()}
    assert whole["base"] == pytest.approx(
        _paper_psnr_by_hand(tmp_path / "test.h5", binning_engine_dir), abs=1e-6
    )
    assert whole["same"] == pytest.approx(whole["base"], abs=1e-6)
    assert abs(whole["off"] - whole["base"]) > 0.01
    for r in rows.values():  # whole frame and every region of the synthetic atomic models, per frame
        assert {"paper_psnr", "region_vacuum_paper_psnr"} <= set(r["metrics"])
        assert len(r["per_image"]) == 3 and r["metrics"]["paper_psnr"]["n"] == 3
    # README's table is rendered from this file: one row per weights, in order of compute
    import benchmarks.readme_render as rr
    from benchmarks.readme_paper import compute_trend as render

    monkeypatch.setattr(rr, "RESULTS", tmp_path / "results")
    md = render()
    assert md.startswith("`python -m benchmarks.compute_trend --manifest")
    assert [line.split("`")[1] for line in md.splitlines() if line.startswith("| `")] == [
        "base",
        "same",
        "off",
    ]
    assert f"{whole['base']:.2f} ± " in md
    # beside the weights: the low-pass tuned on the validation models, per region, and surface F1
    (lp,) = res["baselines"]
    assert lp["method"] == "Low-pass filter" and lp["params"]["sigma"] > 0
    assert np.isfinite(lp["metrics"]["region_support_paper_psnr"]["mean"])
    assert "F1 surface" in md and f"{lp['metrics']['paper_psnr']['mean']:.2f} ± " in md


def test_a_lineage_that_does_not_match_the_weights_is_refused(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    from benchmarks.compute_trend import lineage

    rows = _manifest(tmp_path, binning_engine_dir)["rows"]
    rows[2]["stage"]["init_sha256"] = "0" * 64  # "off" claims to start from weights its parent lacks
    with pytest.raises(ValueError, match="off started from weights"):
        lineage(rows)
    rows[2]["parent"] = "nobody"
    with pytest.raises(ValueError, match="not a row"):
        lineage(rows)


QUALITY_GPU_WORLD = "paper + paper-envelope + paper-optics + paper-twins, GPU subset"


@pytest.mark.parametrize(
    ("manifest", "row", "first_world"),
    [
        ("compute_trend_manifest.json", "sbd-unet4-paper", "detector"),
        ("compute_trend_quality_manifest.json", "sbd-unet4x64-paper-ft2", QUALITY_GPU_WORLD),
    ],
)  # fmt: skip
def test_the_committed_manifests_name_weights_that_exist_and_chain(
    manifest: str, row: str, first_world: str
) -> None:
    """The manifests the README's trends come from: every weights file is committed and the stated
    starting weights of each stage are its parent's (sha256), so the curve is the lineage it claims."""
    from benchmarks.compute_trend import MANIFEST, lineage, weights_file

    rows = json.loads((MANIFEST.parent / manifest).read_text())["rows"]
    for r in rows:
        assert weights_file(r).is_file(), r["name"]
        assert weights_file(r).stat().st_size < 5_000_000
    chains = lineage(rows)
    assert chains[row][0]["world"] == first_world


def test_rows_are_written_back_as_engines_that_score_as_the_weights(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    """--write-engines: a bare checkpoint row becomes an engine directory holding exactly its weights."""
    from benchmarks import compute_trend

    manifest = _manifest(tmp_path, binning_engine_dir)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "engines"
    args = ["--manifest", str(tmp_path / "manifest.json"), "--only", "off", "--write-engines", str(out)]
    assert compute_trend.main(args) == 0
    assert [p.name for p in out.iterdir()] == ["off"]
    got = torch.load(out / "off" / "model.pt", weights_only=True)
    want = torch.load(tmp_path / "off.pt", weights_only=True)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
