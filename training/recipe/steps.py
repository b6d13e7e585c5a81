"""The five steps of the GPU recipe; each calls the stage that does the work and returns its outputs."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.recipe.config import RecipeConfig
from training.recipe.parts import (
    check_export_dir,
    detector_test_path,
    engine_dir,
    n_train_gpus,
    simulation_status,
    torchrun_command,
    train_config,
    world_sets,
)


class StepContext:
    def __init__(self, cfg: RecipeConfig, dev: dict[str, Any], device: str | None):
        self.cfg, self.dev, self.device = cfg, dev, device
        self._tc: Any = None

    @property
    def tc(self) -> Any:
        if self._tc is None:
            self._tc = train_config(self.cfg, self.device or "cpu")
        return self._tc

    @property
    def engine_dir(self) -> Path:
        return engine_dir(self.cfg, self.tc.name)


class Skipped(Exception):
    """Raised by a step that cannot run here; the message is the reason recorded."""


def step_simulate(ctx: StepContext) -> dict[str, Any]:
    from training.sim.simulate import simulate
    from training.train.stop import check_stop  # a stop Python swallowed: raised between tasks

    cfg = ctx.cfg
    status = simulation_status(cfg)
    if status["complete"]:
        raise Skipped(f"{cfg.data} is already complete ({'; '.join(status['files'].values())})")
    workers = cfg.workers or ctx.dev["cpu_count"]
    out: dict[str, Any] = {"workers": workers, "status_before": status["files"], "worlds": {}}
    for world, path in world_sets(cfg):  # resumable: a complete set is a plan with nothing to run
        summary = simulate(world, path, scheduler=cfg.scheduler, workers=workers, check=check_stop)
        if summary["failed"]:
            raise RuntimeError(f"{len(summary['failed'])} {world.name} tasks failed: {summary['failed'][:5]}")
        out["worlds"][world.name] = {"file": str(path), **summary}
    return out


def step_train(ctx: StepContext) -> dict[str, Any]:
    from training.train.loop import train

    cfg, tc = ctx.cfg, ctx.tc
    if not Path(tc.data).is_file():
        raise FileNotFoundError(f"{tc.data}: no training set (run the simulate step)")
    nproc = n_train_gpus(cfg, ctx.dev, ctx.device or "cpu")
    if nproc > 1:
        tc.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = tc.run_dir / "recipe_train_config.json"
        cfg_path.write_text(tc.model_dump_json(indent=2) + "\n")
        cmd = torchrun_command(cfg_path, nproc, cfg.resume)
        print(f"launching: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        summary = json.loads((tc.run_dir / "summary.json").read_text())
    else:
        summary = train(tc, resume=cfg.resume)
    keep = ("steps", "best_val_psnr", "best_step", "wall_s", "world_size", "device", "parameters")
    return {
        "run_dir": str(tc.run_dir),
        "gpus_used": nproc if (ctx.device or "").startswith("cuda") else 0,
        "scales": tc.scales,
        "channels": tc.channels,
        "batch_per_process": tc.batch,
        "init_from": cfg.init_from,
        **{k: summary.get(k) for k in keep},
    }


def step_export(ctx: StepContext) -> dict[str, Any]:
    from training.evaluate.tables import EvalConfig, evaluate_fov
    from training.train.export import export_run, set_metrics

    run_dir, out = ctx.tc.run_dir, ctx.engine_dir
    check_export_dir(ctx.cfg, out)  # again: the folder may have changed during training
    card = export_run(run_dir, out)
    res: dict[str, Any] = {
        "engine_dir": str(out),
        "parameters": card.parameters,
        "fov_px": card.field_of_view,
    }
    if ctx.cfg.card_metrics:
        ecfg = EvalConfig(
            data=ctx.tc.data, max_test_images=ctx.cfg.card_test_images, engine_kind="onnxruntime"
        )
        ev = evaluate_fov(ecfg, {card.name: out})
        row = ev["rows"][0]
        set_metrics(
            out,
            {
                "split": "test",
                "data": str(ctx.tc.data),
                "n_images": row["n_images"],
                "noise_seed": ev["noise_seed"],
                "detection": ev["detection"],
                **row["metrics"],
            },
        )
        res["card_test_psnr"] = row["metrics"]["psnr"]["mean"]
    res["files"] = sorted(p.name for p in out.iterdir())
    return res


def step_tensorrt(ctx: StepContext) -> dict[str, Any]:
    from training.train.export import NoGPU, build_engine

    reason = ctx.dev["tensorrt_unavailable"]
    if reason:
        raise Skipped(f"TensorRT plan not built: {reason}")
    try:
        plan = build_engine(ctx.engine_dir, ctx.cfg.precision, None, ctx.cfg.max_batch)
    except NoGPU as e:
        raise Skipped(str(e)) from e
    return {
        "plan": str(plan),
        "plan_bytes": plan.stat().st_size,
        "precision": ctx.cfg.precision,
        "gpu": ctx.dev["gpus"][0] if ctx.dev["gpus"] else None,
    }


def step_evaluate(ctx: StepContext) -> dict[str, Any]:
    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig, evaluate_table_5_1_detector
    from training.evaluate.dose_curve import psnr_vs_dose
    from training.evaluate.markdown import table_5_1_detector_markdown, write_markdown
    from training.evaluate.tables import write_json

    cfg, out = ctx.cfg, ctx.engine_dir
    test = detector_test_path(cfg)
    if not test.is_file():
        raise FileNotFoundError(f"{test}: no test split at the detector's sampling (run the simulate step)")
    if not (out / "card.json").is_file():
        raise FileNotFoundError(f"{out}: no engine (run the export step)")
    cfg.results.mkdir(parents=True, exist_ok=True)
    dcfg = DetectorEvalConfig(
        test=test, val=cfg.data, max_test_images=cfg.max_test_images, slow_test_images=cfg.slow_test_images,
        out_dir=cfg.results, engine_kind=cfg.engine_kind,
    )  # fmt: skip
    engines = {f"SBD, {out.name} (this recipe)": out}
    shipped = default_engine_root() / DEFAULT_ENGINE
    if cfg.compare_shipped and (shipped / "card.json").is_file() and shipped.resolve() != out.resolve():
        engines[f"SBD, {DEFAULT_ENGINE} (shipped)"] = shipped
    table = evaluate_table_5_1_detector(dcfg, engines)
    table["command"] = "sbd-train gpu-recipe"
    write_json(table, cfg.results / "table_5_1_detector.json")
    write_markdown(table_5_1_detector_markdown(table), cfg.results / "table_5_1_detector.md")
    curve = psnr_vs_dose(dcfg.model_copy(update={"max_test_images": cfg.dose_curve_images}), out)
    curve["command"] = "sbd-train gpu-recipe"
    write_json(curve, cfg.results / "dose_curve.json")
    mine = next(r for r in table["rows"] if r.get("engine") == str(out))
    return {
        "table": str(cfg.results / "table_5_1_detector.json"),
        "dose_curve": str(cfg.results / "dose_curve.json"),
        "test": str(test),
        "test_images": table["test_images"],
        "engine_paper_psnr": mine["metrics"]["paper_psnr"]["mean"],
        "engine_psnr": mine["metrics"]["psnr"]["mean"],
        "paper_margins": table.get("paper_margins"),
        "dose_curve_psnr": {f"x{r['dose_factor']:g}": r["psnr"] for r in curve["rows"]},
        "engine_kind": cfg.engine_kind,
    }


STEP_FUNCTIONS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "simulate": step_simulate,
    "train": step_train,
    "export": step_export,
    "tensorrt": step_tensorrt,
    "evaluate": step_evaluate,
}
