"""The GPU session's record: training curves of the recipe runs and capacity on the GPU, in one table.

Reads what a GPU session (``benchmarks/gpu_session.sh``) brought back and was committed: each run's
``log.jsonl`` and ``gpu_recipe.json`` under ``benchmarks/results/gpu-recipe/<tag>-<run>.*`` and the
capacity benchmark's ``bench_capacity_<tag>_<engine>.json``. Writes ``gpu_session_<tag>.json``.
Nothing here needs a GPU: it summarises measurements made on one.

    python -m benchmarks.gpu_session_report [--tag h200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import results_dir, table, write_result


def run_summary(log_path: Path, recipe_path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in log_path.open()]
    start = next(r for r in rows if r.get("event") == "start")
    losses = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_psnr" in r]
    recipe = json.loads(recipe_path.read_text())
    train = next(s for s in recipe["steps"] if s["step"] == "train")
    freeze = next((r["step"] for r in rows if r.get("event") == "norm_frozen_reset_best"), None)
    # after a freeze the run forgets earlier checkpoints (another network): so does this summary
    eligible = [r for r in vals if freeze is None or r["step"] >= freeze]
    best = max(eligible, key=lambda r: r.get("score", r["val_psnr"]))

    def loss_at(step: int) -> float:
        return min(losses, key=lambda r: abs(r["step"] - step))["loss"]

    out: dict[str, Any] = {
        "run": recipe_path.stem,
        "command": recipe["command"],
        "gpu": ", ".join(recipe["devices"]["gpus"]),
        "torch": recipe["devices"]["torch"],
        "parameters": start["params"],
        "fov_px": start["fov"],
        "train_images": start["train_images"],
        "steps": train["outputs"]["steps"],
        "batch": train["outputs"]["batch_per_process"],
        "train_seconds": train["seconds"],
        "samples_per_s": losses[-1]["samples_per_s"],
        "best_step": best["step"],
        "best_val_score": best.get("score", best["val_psnr"]),
        "best_val_psnr_x1": best["val_psnr"],
        "best_val_psnr_x0.5": best.get("val_psnr_x0.5"),
        "best_val_psnr_x2": best.get("val_psnr_x2"),
        "final_loss": losses[-1]["loss"],
        "norm_frozen_at": None,
        "val_curve": [
            {"step": r["step"], "t_s": round(r["t_s"], 1), "score": round(r.get("score", r["val_psnr"]), 3)}
            for r in vals[:: max(1, len(vals) // 12)]
        ],
        "steps_status": {s["step"]: s["status"] for s in recipe["steps"]},
    }
    if freeze is not None:
        frozen_at = freeze - freeze % 250 if freeze % 250 else freeze - 250
        out["norm_frozen_at"] = frozen_at
        out["loss_before_freeze"] = loss_at(frozen_at)
        out["loss_peak_after_freeze"] = max(
            r["loss"] for r in losses if frozen_at < r["step"] <= frozen_at + 250
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", default="h200", help="the session's tag in the file names")
    a = ap.parse_args()
    res = results_dir()
    runs = [
        run_summary(res / "gpu-recipe" / f"{p.stem}.log.jsonl", p)
        for p in sorted((res / "gpu-recipe").glob(f"{a.tag}-*.json"))
    ]
    capacity = []
    for p in sorted(res.glob(f"bench_capacity_{a.tag}_*.json")):
        d = json.loads(p.read_text())
        seen = set()
        for r in d["per_worker"]:
            if (r["size"], r["bin"]) in seen:  # the half-cores row: the same GPU
                continue
            seen.add((r["size"], r["bin"]))
            capacity.append({"engine": d["engine"], "gpu": d["gpu"], **{k: r[k] for k in (
                "size", "bin", "working_px", "ms_per_frame", "frames_per_s")}})  # fmt: skip
    path = write_result(f"gpu_session_{a.tag}", {"runs": runs, "capacity": capacity})
    print(table(runs, ["run", "parameters", "steps", "batch", "train_seconds", "samples_per_s",
                       "norm_frozen_at", "best_step", "best_val_score", "final_loss"]))  # fmt: skip
    print(table(capacity, ["engine", "size", "bin", "working_px", "ms_per_frame", "frames_per_s"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
