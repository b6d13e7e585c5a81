"""What a GPU-recipe run would do, step by step, with the devices found; writes nothing (``--dry-run``)."""

from __future__ import annotations

import shlex
from typing import Any

from sbd_stream.engines.card import QUALITY_ENGINE
from training.recipe.config import (
    SUMMARY_FILE,
    RecipeConfig,
    RecipeError,
    devices,
    resolve_device,
    selected_steps,
)
from training.recipe.parts import (
    _grid_images,
    check_export_dir,
    detector_test_path,
    n_train_gpus,
    simulation_status,
    torchrun_command,
    world_sets,
)
from training.recipe.steps import StepContext


def describe_plan(cfg: RecipeConfig, dev: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run would do, step by step, with the devices found. Writes nothing."""
    from sbd_stream.compute.model import count_parameters, field_of_view
    from training.train.network import build_network

    dev = dev or devices()
    steps = selected_steps(cfg.steps)
    out: dict[str, Any] = {"devices": dev, "steps": []}
    try:
        device: str | None = resolve_device(cfg, dev)
    except RecipeError as e:
        device = None
        out["refusal"] = str(e) if "train" in steps else None
    # refused here: show the plan as a GPU machine would run it (its defaults)
    ctx = StepContext(cfg, dev, device or "cuda")
    tc = ctx.tc
    workers = cfg.workers or dev["cpu_count"]
    for s in steps:
        item: dict[str, Any] = {"step": s}
        if s == "simulate":
            sets = world_sets(cfg)
            p = sets[0][0]
            item["command"] = "; ".join(
                f"sbd-train simulate --preset {w.name} --out {path} --workers {workers}" for w, path in sets
            ) + (
                f" (n_structures scaled to {p.n_structures} for --images {cfg.images})" if cfg.images else ""
            )
            item["grid"] = " + ".join(f"~{_grid_images(w)}" for w, _ in sets) + (
                " images (before thin supports are dropped)"
            )
            item["data_status"] = simulation_status(cfg)
        elif s == "train":
            nproc = n_train_gpus(cfg, dev, device) if device else 1
            net = build_network(tc)
            item["device"] = device or "refused here (shown with the GPU defaults)"
            item["processes"] = nproc
            if nproc > 1:
                item["command"] = shlex.join(
                    torchrun_command(tc.run_dir / "recipe_train_config.json", nproc, cfg.resume)
                )
            else:
                item["command"] = "in-process training.train.loop.train(config)"
            item["run_dir"] = str(tc.run_dir)
            item["network"] = f"{tc.architecture.value} {tc.scales} scales x {tc.channels} channels, "
            item["network"] += f"{count_parameters(net)} parameters, FoV {field_of_view(net)} px"
            item["budget"] = f"max_minutes={tc.max_minutes} max_steps={tc.max_steps}"
            item["lr"] = f"{tc.lr:g}, schedule {tc.lr_schedule.value}"
            item["norm_freeze"] = (
                "never"
                if tc.freeze_norm_after is None
                else "from step 0 (the engine's statistics)"
                if tc.init_from is not None
                else f"from step {tc.freeze_norm_after}"
            )
            item["batch"] = (
                f"{tc.batch} per process x {nproc}, patch {tc.augment.patch}, threads {tc.threads}"
            )
            item["init_from"] = cfg.init_from
        elif s == "export":
            item["command"] = f"sbd-train export {tc.run_dir} --engine-dir {ctx.engine_dir}"
            try:
                item["engine_dir"] = check_export_dir(cfg, ctx.engine_dir) or "new or empty"
            except RecipeError as e:
                item["engine_dir"] = f"refused: {e}"
                out["refusal"] = out.get("refusal") or str(e)
            if cfg.train_preset == "paper-quality":
                item["quality_engine"] = (
                    f"not installed: `sbd-train install-quality {ctx.engine_dir}` runs the quality checks "
                    f"(tests/e2e/test_engine_quality.py) and only then installs it as {QUALITY_ENGINE}"
                )
        elif s == "tensorrt":
            reason = dev["tensorrt_unavailable"]
            item["command"] = f"sbd-train build-engine {ctx.engine_dir} --precision {cfg.precision}"
            item["will"] = f"skip: {reason}" if reason else "build"
        elif s == "evaluate":
            try:
                item["test"] = str(detector_test_path(cfg))
            except RecipeError as e:
                item["test"] = f"error: {e}"
            item["command"] = (
                f"sbd-train evaluate-detector --test {item['test']} --val {cfg.data} "
                f"--engine {ctx.engine_dir} --max-test-images {cfg.max_test_images} --out-dir {cfg.results}; "
                "sbd-train dose-curve"
            )
        out["steps"].append(item)
    out["summary_file"] = str(cfg.results / SUMMARY_FILE)
    return out


def format_plan(plan: dict[str, Any]) -> str:
    d = plan["devices"]
    gpus = ", ".join(d["gpus"]) or "none"
    lines = [
        f"devices: {d['cpu_count']} CPU cores; CUDA GPUs: {gpus}; "
        f"TensorRT: {'available' if not d['tensorrt_unavailable'] else d['tensorrt_unavailable']}",
    ]
    if plan.get("refusal"):
        lines.append(f"WOULD REFUSE: {plan['refusal']}")
    for i, item in enumerate(plan["steps"], 1):
        lines.append(f"{i}. {item['step']}: {item.get('command', '')}")
        for k, v in item.items():
            if k not in ("step", "command") and v is not None:
                lines.append(f"     {k}: {v}")
    lines.append(f"summary: {plan['summary_file']}")
    return "\n".join(lines)
