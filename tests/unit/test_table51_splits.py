"""Table 5.1 draws from the right split: its classical baselines and the detector threshold are tuned on
validation structures, never on the test structures it scores, and a cached row made under another
split is not reused (audit 27, mutants BL2 and BL5: both passed the end-to-end table test unseen)."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.evaluate.tables as tables
from training.evaluate.baselines import classical_baselines, tune
from training.evaluate.tables import EvalConfig, calibrate_detector, evaluate_table_5_1, load_items
from training.sim.dataset import SimulatedDataset
from training.sim.splits import SplitSpec
from training.sim.synthetic_data import write_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("data") / "syn.h5", n_structures=10, per_structure=3, size=64
    )


@pytest.fixture(autouse=True)
def fast_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw and the low-pass only: NLM and BM3D take minutes, and the split rule is the same for all."""
    monkeypatch.setattr(tables, "classical_baselines", lambda n=None: classical_baselines(n)[:2])


def _split_ids(data: Path, split: SplitSpec) -> dict[str, set[str]]:
    with SimulatedDataset(data) as ds:
        ids = ds.structure_ids()
        return {k: {str(ids[i]) for i in v} for k, v in ds.split(split).items()}


def test_baselines_and_threshold_are_tuned_on_val_structures_disjoint_from_test(synthetic: Path) -> None:
    cfg = EvalConfig(data=synthetic, tune_images=4, max_test_images=6)
    res = evaluate_table_5_1(cfg, {}, log=lambda s: None)
    split = _split_ids(synthetic, cfg.split)
    assert set(res["val_structures"]) <= split["val"] and set(res["test_structures"]) <= split["test"]
    assert res["val_structures"] and not set(res["val_structures"]) & set(res["test_structures"])
    # the recorded scores are those of the validation images: the same tuning, repeated by hand
    val, dose = load_items(synthetic, cfg.split, "val", cfg.seed, cfg.tune_images)
    low_pass = next(r for r in res["rows"] if r["method"] == "Low-pass filter")
    params, scores = tune(classical_baselines()[1], [(v.clean, v.counts) for v in val], dose)
    assert low_pass["params"] == params and low_pass["val_grid_psnr"] == pytest.approx(scores)
    spec, thr_scores = calibrate_detector(cfg, val)
    assert res["detector_threshold_val_f1"] == pytest.approx(thr_scores)
    assert res["detection"]["threshold"] == spec.threshold


def test_a_cached_table_made_under_another_split_is_not_reused(synthetic: Path) -> None:
    cfg = EvalConfig(data=synthetic, tune_images=2, max_test_images=3)
    first = evaluate_table_5_1(cfg, {}, log=lambda s: None)
    same = evaluate_table_5_1(cfg, {}, log=lambda s: None, cached=first)
    assert all(r.get("reused_from_cache") for r in same["rows"] if r["kind"] == "classical")
    other = cfg.model_copy(update={"split": SplitSpec(seed=1)})
    assert _split_ids(synthetic, other.split)["test"] != _split_ids(synthetic, cfg.split)["test"]
    again = evaluate_table_5_1(other, {}, log=lambda s: None, cached=first)
    assert not any(r.get("reused_from_cache") for r in again["rows"])
    assert again["fingerprint"] != first["fingerprint"]
    assert again["test_structures"] != first["test_structures"]
