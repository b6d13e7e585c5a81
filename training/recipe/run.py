"""Running the GPU recipe: the selected steps in order, each one's status written as soon as it ends."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbd_stream.invocation import invocation
from training.recipe.config import NEEDS, SUMMARY_FILE, RecipeConfig, devices, resolve_device, selected_steps
from training.recipe.parts import check_export_dir
from training.recipe.steps import STEP_FUNCTIONS, Skipped, StepContext


def run_recipe(cfg: RecipeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected steps in order; returns (and writes) the summary."""
    steps = selected_steps(cfg.steps)
    dev = devices()
    device = (
        resolve_device(cfg, dev)
        if "train" in steps
        else (cfg.device or ("cuda" if dev["cuda_available"] else "cpu"))
    )
    ctx = StepContext(cfg, dev, device)
    if {"export", "tensorrt", "evaluate"} & set(steps):
        _ = ctx.engine_dir  # refuses the quality engine's own folder before any step runs
    if "export" in steps:  # export's rule for its folder, before simulating and training
        replaced = check_export_dir(cfg, ctx.engine_dir)
        if replaced is not None:
            log(f"export step: {replaced}")
    summary: dict[str, Any] = {
        "recipe": "sbd-train gpu-recipe",
        "command": invocation("sbd-train"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": dev,
        "train_device": device,
        "config": cfg.model_dump(mode="json"),
        "steps": [],
    }
    path = cfg.results / SUMMARY_FILE
    failed: set[str] = set()
    for name in steps:
        rec: dict[str, Any] = {"step": name}
        t0 = time.perf_counter()
        dep = NEEDS.get(name)
        if dep in failed:
            rec.update(status="skipped", reason=f"not run: the {dep} step failed")
            failed.add(name)  # what depends on this one is not run either
        else:
            log(f"== {name} ==")
            try:
                rec.update(status="ok", outputs=STEP_FUNCTIONS[name](ctx))
            except Skipped as e:
                rec.update(status="skipped", reason=str(e))
                log(f"{name}: SKIPPED: {e}")
            except (Exception, SystemExit) as e:
                rec.update(
                    status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()
                )
                failed.add(name)
                log(f"{name}: FAILED: {type(e).__name__}: {e}")
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        summary["steps"].append(rec)
        _write(summary, path)
    summary["ok"] = not failed
    summary["wall_s"] = round(sum(r["seconds"] for r in summary["steps"]), 3)
    _write(summary, path)
    log(format_summary(summary))
    log(f"wrote {path}")
    return summary


def _write(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'step':<10} {'status':<8} {'seconds':>9}  detail", "-" * 72]
    for r in summary["steps"]:
        if r["status"] == "ok":
            o = r.get("outputs", {})
            keys = ("engine_dir", "run_dir", "plan", "table", "out", "best_val_psnr", "engine_paper_psnr")
            detail = ", ".join(f"{k}={_short(o[k])}" for k in keys if o.get(k) is not None)
        else:
            detail = r.get("reason") or r.get("error", "")
        lines.append(f"{r['step']:<10} {r['status']:<8} {r['seconds']:>9.1f}  {detail}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
