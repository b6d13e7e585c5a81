"""`sbd-train gpu-recipe`: the plan (dry run), a CPU smoke run on synthetic data, and the TensorRT step."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fake_sim_task
from typer.testing import CliRunner

from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason
from training.cli import app
from training.recipe.config import STEPS, RecipeConfig
from training.recipe.plan import describe_plan
from training.recipe.run import run_recipe
from training.recipe.steps import step_simulate
from training.sim.synthetic_data import write_synthetic

TRT_REASON = tensorrt_unavailable_reason()


def test_dry_run_lists_every_step_in_order_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["gpu-recipe", "--dry-run", "--images", "2000"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln[:1].isdigit()]
    assert [ln.split(":")[0] for ln in lines] == [f"{i}. {s}" for i, s in enumerate(STEPS, 1)]
    assert "devices:" in res.output and "sbd-train simulate --preset paper" in res.output
    # the same models imaged the other ways are simulated beside the set and trained on with it
    assert "--preset paper-envelope --out data/paper-gpu.paper-envelope.h5" in res.output
    assert "--preset paper-optics --out data/paper-gpu.paper-optics.h5" in res.output
    assert "n_structures scaled to" in res.output  # --images scales the grid
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the results folder


def test_plan_for_several_gpus_uses_torchrun_and_gpu_defaults() -> None:
    dev = {
        "cpu_count": 16, "cuda_available": True, "gpus": ["GPU"] * 4, "torch": "x", "cuda_version": "12",
        "tensorrt_unavailable": None,
    }  # fmt: skip
    plan = describe_plan(RecipeConfig(steps=["train", "tensorrt"], model="paper"), dev=dev)
    train = plan["steps"][0]
    assert train["processes"] == 4 and "--nproc_per_node=4" in train["command"]
    assert "training.recipe train-worker" in train["command"]
    assert "6 scales x 128 channels" in train["network"] and train["batch"].startswith("16 per process x 4")
    assert plan["steps"][1]["will"] == "build" and "refusal" not in plan
    assert train["lr"] == "0.001, schedule cosine"  # a lease is a fixed budget: decay over it
    assert train["norm_freeze"] == "never"  # 16 frames per batch: batch statistics are stable
    cpu_like = describe_plan(RecipeConfig(steps=["train"], model="wide", freeze_norm_after=500), dev=dev)
    assert cpu_like["steps"][0]["norm_freeze"] == "from step 500"
    shipped = describe_plan(
        RecipeConfig(steps=["train"], model="detector", init_from="sbd-unet4-detector"), dev=dev
    )
    assert shipped["steps"][0]["norm_freeze"] == "from step 0 (the engine's statistics)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: nothing to refuse")
def test_training_without_a_gpu_is_refused_unless_allowed(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["gpu-recipe", "--steps", "train", "--data", str(tmp_path / "x.h5"), "--results", str(tmp_path)]
    )
    assert res.exit_code == 2 and "--allow-cpu" in res.output
    assert list(tmp_path.iterdir()) == []


def test_extra_worlds_join_training_and_the_completeness_check(tmp_path: Path) -> None:
    from training.recipe.parts import simulation_status, train_config

    cfg = RecipeConfig(data=tmp_path / "p.h5", train_preset="paper-quality")
    assert train_config(cfg, "cpu").extra_data == [
        tmp_path / "p.paper-envelope.h5",
        tmp_path / "p.paper-optics.h5",
        tmp_path / "p.paper-twins.h5",
    ]
    status = simulation_status(cfg)  # 4 worlds, each with its 0.060 A test split
    assert not status["complete"] and len(status["files"]) == 8
    assert str(tmp_path / "p.paper-optics-test60pm.h5") in status["files"]
    assert str(tmp_path / "p.paper-twins-test60pm.h5") in status["files"]
    assert train_config(cfg.model_copy(update={"extra_worlds": []}), "cpu").extra_data == []


def test_simulate_step_skips_a_complete_data_set(tmp_path: Path) -> None:
    from training.recipe.config import devices
    from training.recipe.steps import StepContext
    from training.sim.dataset import SimulatedDatasetWriter
    from training.sim.worlds import WORLDS, file_attrs, plan

    preset = WORLDS["tiny"]
    out = tmp_path / "tiny.h5"
    with SimulatedDatasetWriter(out, (96, 96), file_attrs(preset)) as w:
        for t in plan(preset):
            w.append_task(fake_sim_task(t.key, t.structure.structure_id, 1, shape=(96, 96)))
    ctx = StepContext(RecipeConfig(sim_preset="tiny", data=out, extra_worlds=[]), devices(), "cpu")
    with pytest.raises(Exception, match="already complete") as e:
        step_simulate(ctx)
    assert type(e.value).__name__ == "Skipped"


def test_cpu_smoke_run_trains_exports_skips_tensorrt_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SBD_CACHE_DIR", str(tmp_path / "cache"))
    data = write_synthetic(tmp_path / "syn.h5", n_structures=6, per_structure=4, size=64)
    test = write_synthetic(tmp_path / "syn-test.h5", n_structures=2, per_structure=2, size=64, seed=7)
    args = [
        "gpu-recipe", "--steps", "train,export,tensorrt,evaluate", "--allow-cpu", "--device", "cpu",
        "--data", str(data), "--test", str(test), "--train-preset", "tiny", "--threads", "1",
        "--engine-dir", str(tmp_path / "eng"), "--results", str(tmp_path / "res"),
        "--max-test-images", "2", "--slow-test-images", "1", "--dose-curve-images", "2",
        "--no-compare-shipped", "--lr-schedule", "cosine", "--extra-worlds", "",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    summary = json.loads((tmp_path / "res" / "gpu_recipe.json").read_text())
    st = {s["step"]: s for s in summary["steps"]}
    assert list(st) == ["train", "export", "tensorrt", "evaluate"]
    if torch.cuda.is_available() and TRT_REASON is None:  # a GPU box: the plan is really built
        assert st["tensorrt"]["status"] == "ok"
    else:
        assert st["tensorrt"]["status"] == "skipped" and "TensorRT" in st["tensorrt"]["reason"]
        assert st["tensorrt"]["reason"].endswith(TRT_REASON)
    for s in ("train", "export", "evaluate"):
        assert st[s]["status"] == "ok", st[s].get("traceback")
    assert res.exit_code == 0, res.output
    assert st["train"]["outputs"]["steps"] == 6 and st["train"]["outputs"]["device"] == "cpu"
    log = [json.loads(ln) for ln in (Path(st["train"]["outputs"]["run_dir"]) / "log.jsonl").open()]
    lrs = [r["lr"] for r in log if "loss" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-3 and lrs[-1] < 1e-4  # cosine over 6 steps
    eng = tmp_path / "eng"
    assert {"card.json", "model.pt", "model.onnx"} <= {p.name for p in eng.iterdir()}
    card = json.loads((eng / "card.json").read_text())
    assert card["metrics"]["split"] == "test" and card["training"]["steps"] == 6
    ev = st["evaluate"]["outputs"]
    assert ev["test_images"] == 2 and set(ev["dose_curve_psnr"]) == {"x0.25", "x0.5", "x1", "x2", "x4"}
    assert (tmp_path / "res" / "table_5_1_detector.md").is_file()
    assert (tmp_path / "res" / "dose_curve.json").is_file()
    assert summary["ok"] is True and summary["devices"]["cpu_count"] >= 1
    assert all(s["seconds"] >= 0 for s in summary["steps"])
    assert "tensorrt   skipped" in res.output or "tensorrt   ok" in res.output  # the printed table


@pytest.mark.gpu
@pytest.mark.skipif(TRT_REASON is not None, reason=f"needs a GPU with TensorRT: {TRT_REASON}")
def test_tensorrt_step_builds_a_plan_on_a_gpu(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SBD_CACHE_DIR", str(tmp_path / "cache"))
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine_dir, eng)
    summary = run_recipe(
        RecipeConfig(steps=["tensorrt"], engine_dir=eng, results=tmp_path / "res"), log=lambda _s: None
    )
    step = summary["steps"][0]
    assert step["status"] == "ok", step.get("error")
    assert Path(step["outputs"]["plan"]).is_file() and step["outputs"]["plan_bytes"] > 0
    assert step["outputs"]["gpu"] == torch.cuda.get_device_name(0)


def test_bf16_autocast_trains_in_channels_last_and_exports_a_float32_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--amp bf16 (the lease's tensor cores) runs on the CPU too; --val-every sets the validation rate,
    --equivariance-weight the orientation term (a GPU continuation of the CPU candidate keeps it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SBD_CACHE_DIR", str(tmp_path / "cache"))
    data = write_synthetic(tmp_path / "syn.h5", n_structures=6, per_structure=4, size=64)
    args = [
        "gpu-recipe", "--steps", "train,export", "--allow-cpu", "--device", "cpu", "--data", str(data),
        "--train-preset", "tiny", "--threads", "1", "--engine-dir", str(tmp_path / "eng"),
        "--results", str(tmp_path / "res"), "--extra-worlds", "", "--amp", "bf16", "--val-every", "2",
        "--max-steps", "4", "--no-card-metrics", "--equivariance-weight", "0.5",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "res" / "gpu_recipe.json").read_text())
    run_dir = Path(summary["steps"][0]["outputs"]["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["equivariance_weight"] == 0.5
    log = [json.loads(ln) for ln in (run_dir / "log.jsonl").open()]
    assert [r["step"] for r in log if "val_psnr" in r] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert json.loads((run_dir / "summary.json").read_text())["amp"] == "bf16"
    sd = torch.load(tmp_path / "eng" / "model.pt", weights_only=True)
    assert {v.dtype for v in sd.values()} <= {torch.float32, torch.int64}  # weights stay float32


def test_extra_world_weights_follow_the_preset_or_the_option(tmp_path: Path) -> None:
    from training.recipe.config import RecipeError
    from training.recipe.parts import train_config

    cfg = RecipeConfig(
        data=tmp_path / "p.h5", train_preset="paper-live-twins", init_from="sbd-unet4-paper-twins"
    )
    assert train_config(cfg, "cpu").extra_data_weights == [1.0, 1.0, 2.0]  # the preset's three worlds
    two = cfg.model_copy(update={"extra_worlds": ["paper-twins", "paper-optics"]})
    assert train_config(two, "cpu").extra_data_weights == []  # not the preset's worlds: uniform
    weighted = two.model_copy(update={"extra_weights": [2.0, 1.0]})
    assert train_config(weighted, "cpu").extra_data_weights == [2, 1]
    with pytest.raises(RecipeError, match="2 weights needed"):
        train_config(two.model_copy(update={"extra_weights": [1.0, 1.0, 2.0]}), "cpu")


def test_train_command_takes_the_rate_validation_orientation_and_precision_options(tmp_path: Path) -> None:
    """`sbd-train train --lr --val-every --equivariance-weight --amp`: what a fine-tune of an engine needs
    without writing a preset (e.g. the GPU trial continued on a CPU)."""
    data = write_synthetic(tmp_path / "syn.h5", n_structures=6, per_structure=4, size=64)
    args = [
        "train", "--preset", "tiny", "--data", str(data), "--out-dir", str(tmp_path), "--threads", "1",
        "--max-steps", "4", "--lr", "5e-4", "--val-every", "2", "--equivariance-weight", "0.5",
        "--amp", "bf16", "--freeze-norm-after", "3",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert (cfg["lr"], cfg["val_every"], cfg["equivariance_weight"], cfg["amp"]) == (5e-4, 2, 0.5, "bf16")
    assert cfg["freeze_norm_after"] == 3
    log = [json.loads(ln) for ln in (tmp_path / "tiny" / "log.jsonl").open()]
    assert [r["step"] for r in log if "val_psnr" in r] == [2, 4]


def test_a_run_from_an_engine_keeps_its_running_statistics_under_a_preset_that_never_freezes(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """`tiny` never freezes batch norm; started --init-from an engine, the engine's fitted running
    statistics must still stay as they are (frozen from step 0), or eval mode runs another network."""
    data = write_synthetic(tmp_path / "syn.h5", n_structures=6, per_structure=4, size=64)
    args = [
        "train", "--preset", "tiny", "--data", str(data), "--out-dir", str(tmp_path), "--threads", "1",
        "--max-steps", "3", "--init-from", str(tiny_engine_dir),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    before = torch.load(tiny_engine_dir / "model.pt", weights_only=True)
    after = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))  # it trained
