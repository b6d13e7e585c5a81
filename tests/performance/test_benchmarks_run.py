"""Performance tier: the benchmarks run end to end and write their JSON (no timing is asserted here).

Numbers come from running the benchmarks themselves on a quiet machine (README); these smoke runs only
make sure that a facility engineer's `python -m benchmarks.<name>` works on a fresh clone, with tiny
sizes and results written to a temporary folder ($SBD_BENCH_RESULTS), never over the committed ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, name: str, *args: str) -> dict:
    env = {**os.environ, "SBD_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "|" in proc.stdout  # the printed table
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.timeout(320)
def test_bench_binning_writes_speed_and_quality_rows(tmp_path: Path, binning_engine_dir: Path) -> None:
    res = _bench(
        tmp_path, "bench_binning", "--model", str(binning_engine_dir), "--size", "128", "--frames", "2",
        "--repeats", "1", "--engine", "torch",
    )  # fmt: skip
    assert [r["bin"] for r in res["speed"]] == [1, 2, 4]
    assert all(r["frames_per_s"] > 0 for r in res["speed"])
    assert [r["bin"] for r in res["quality"]] == [2, 4, 6]
    assert res["quality"][1]["paper_psnr_db"] >= 45.0  # 4 x 4 binning alone is far below any denoiser
    assert res["machine"]["cpus"] >= 1 and res["command"].startswith("python -m benchmarks.bench_binning")


@pytest.mark.timeout(320)
def test_bench_offline_dask_writes_rows_and_bit_identity(tmp_path: Path, binning_engine_dir: Path) -> None:
    env = {**os.environ, "SBD_BENCH_RESULTS": str(tmp_path)}
    args = ["--model", str(binning_engine_dir), "--size", "128", "--frames", "8", "--chunk-frames", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_offline_dask", *args, "--workers", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "offline_dask.json").read_text())
    runs = [r["run"] for r in res["rows"]]
    assert runs[0] == "single process (denoise_file)"
    assert {"dask local, cold", "dask local, warm"} <= set(runs)
    assert all(r["frames_per_s"] > 0 for r in res["rows"])
    assert {"1_cold", "1_warm"} <= set(res["bit_identical_to_single"])
    assert all(res["bit_identical_to_single"].values())


@pytest.mark.timeout(320)
def test_bench_capacity_writes_rates_scaling_and_the_40hz_table(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    res = _bench(
        tmp_path, "bench_capacity", "--model", str(binning_engine_dir), "--sizes", "128,96x80",
        "--bins", "1,4", "--min-seconds", "0.05", "--scaling-frames", "12", "--scaling-size", "128",
        "--batch", "2",
    )  # fmt: skip
    cores = res["machine"]["cpus"]
    sizes = {(r["size"], r["bin"]) for r in res["per_worker"]}
    assert sizes == {("128x128", 1), ("128x128", 4), ("96x80", 1), ("96x80", 4)}
    assert all(r["frames_per_s"] > 0 for r in res["per_worker"])
    assert [r["workers"] for r in res["scaling"]] == [1, 2] and all(r["frames"] == 12 for r in res["scaling"])
    assert res["scaling"][1]["threads_each"] == max(1, cores // 2)
    assert res["scaling_summary"]["speedup_2_vs_1_worker_same_cores"] > 0
    cap = {(r["size"], r["bin"]): r for r in res["capacity_40Hz"]}
    assert set(cap) == sizes
    for row in cap.values():  # the fewest workers at the measured rate that reach 40 Hz
        n, fps = row["workers_for_40Hz"], row["frames_per_s_per_worker"]
        assert n * fps >= 40.0 and (n - 1) * fps < 40.0


def test_gpu_session_report_summarises_the_committed_gpu_records(tmp_path: Path) -> None:
    """The H200 session's records (committed) -> one summary; the freeze's loss jump is found in the log."""
    import shutil

    src = REPO / "benchmarks" / "results"
    shutil.copytree(src / "gpu-recipe", tmp_path / "gpu-recipe")
    for p in src.glob("bench_capacity_h200_*.json"):
        shutil.copy(p, tmp_path / p.name)
    env = {**os.environ, "SBD_BENCH_RESULTS": str(tmp_path)}
    cmd = [sys.executable, "-m", "benchmarks.gpu_session_report", "--tag", "h200"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_session_h200.json").read_text())
    runs = {r["run"]: r for r in res["runs"]}
    frozen, never = runs["h200-sbd-unet4x64-gpu"], runs["h200-sbd-unet4x64-gpu-nofreeze"]
    assert frozen["norm_frozen_at"] == 2000 and never["norm_frozen_at"] is None
    assert frozen["loss_peak_after_freeze"] > 100 * frozen["loss_before_freeze"]
    assert never["best_val_score"] > frozen["best_val_score"] + 1.5
    assert all(r["gpu"] == "NVIDIA H200" and r["steps_status"]["train"] == "ok" for r in runs.values())
    engines = {(r["engine"], r["size"], r["bin"]) for r in res["capacity"]}
    assert ("sbd-unet4-detector", "3838x3710", 4) in engines  # the H200 records and len(res["capacity"]) == 8


@pytest.mark.timeout(320)
def test_bench_orientation_sets_scores_every_set_on_the_same_draws(tmp_path: Path) -> None:
    env = {**os.environ, "SBD_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_orientation_sets", "--seeds", "1", "--frames", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 flips" in proc.stdout and "|" in proc.stdout
    res = json.loads((tmp_path / "orientation_sets_sbd-unet4-detector.json").read_text())
    sets = [r["set"] for r in res["summary"]]
    assert sets == ["as is", "2 (as is, mirrored)", "4 flips", "4 quarter turns", "all 8"]
    (row,) = res["rows"]
    scores = {s: row[s]["whole"] for s in sets}
    assert len(set(scores.values())) == len(sets)  # five different sets really ran, not one five times
    assert scores["all 8"] < scores["as is"] - 2  # a flips-only engine turned a quarter: far worse
    assert res["pixel_size_A"] == 0.060 and res["command"].startswith(
        "python -m benchmarks.bench_orientation_sets"
    )
