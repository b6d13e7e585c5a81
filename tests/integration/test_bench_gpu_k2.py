"""``benchmarks/bench_gpu_k2.py`` (issue 24): its CPU plumbing here, its GPU variants where CUDA is.

No timing is asserted: the numbers come from running the benchmark on an H200
(``benchmarks/gpu_session.sh``). These runs check that the script runs, writes its JSON, skips what a
device cannot do with the reason, never overwrites a CUDA record from a CPU run, and that the faster
paths return what the product's fp32 path returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SBD_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu_k2", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(res: dict, name: str) -> list[dict]:
    return [r for r in res["rows"] if r["variant"] == name]


@pytest.mark.timeout(300)
def test_cpu_path_runs_its_variants_and_skips_the_cuda_ones(tmp_path: Path, binning_engine_dir: Path) -> None:
    out = tmp_path / "k2.json"
    out.write_text(json.dumps({"device_type": "cuda", "rows": ["an H200 record"]}))
    proc = _run(
        tmp_path, "--device", "cpu", "--shape", "256x256", "--seconds", "0.2", "--batch", "1,2",
        "--model", str(binning_engine_dir), "--out", str(out),
        "--variants", "baseline,staged_u8,staged_u16,bf16,graph,best,product_pinned",
    )  # fmt: skip
    assert "|" in proc.stdout  # the printed table
    assert json.loads(out.read_text())["rows"] == ["an H200 record"]  # a CPU run never overwrites it
    res = json.loads((tmp_path / "k2_cpu.json").read_text())
    assert res["status"] == "measured" and res["device_type"] == "cpu"
    assert res["geometry"]["bin"] == 4 and res["shape"] == [256, 256]
    assert res["command"].startswith("python -m benchmarks.bench_gpu_k2")
    for name in ("baseline", "staged_u8", "staged_u16"):
        rows = _rows(res, name)
        assert [r["batch"] for r in rows] == [1, 2]
        assert all(r["frames_per_s"] > 0 and r["ms_per_batch"] > 0 for r in rows), rows
        assert all(r["max_abs_err_counts"] < 1e-4 for r in rows), rows  # the same fp32 code, other feed
        assert all(r["pinned"] is False for r in rows)
    assert all(r["speedup"] == pytest.approx(1.0) for r in _rows(res, "baseline"))
    assert all("compute_ms" in r and "stage_ms" in r for r in _rows(res, "staged_u8"))
    for name in ("graph", "best", "product_pinned"):
        assert all(r["skipped"].startswith("needs CUDA") for r in _rows(res, name))
    for r in _rows(res, "bf16"):  # bf16 autocast on this CPU, or the reason it could not run
        assert "frames_per_s" in r or r["skipped"].startswith("failed"), r
        if "frames_per_s" in r:
            assert np.isfinite(r["max_abs_err_counts"]) and np.isfinite(r["paper_psnr_db"])
    assert res["summary"]["best"]["frames_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: nothing to skip")
def test_without_cuda_it_exits_0_and_says_skipped(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--seconds", "0.1", timeout=120)
    assert "no CUDA device: skipped" in proc.stdout
    res = json.loads((tmp_path / "bench_gpu_k2.json").read_text())
    assert res["status"] == "skipped" and "torch.cuda.is_available() is False" in res["reason"]


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"
)
def test_gpu_variants_match_the_product_path(tmp_path: Path) -> None:
    """The shipped engine on 1024^2 frames at bin 4: every variant runs; fp32 ones equal the product's."""
    _run(
        tmp_path, "--shape", "1024x1024", "--seconds", "0.3", "--batch", "2",
        "--variants", "baseline,product_pinned,staged_u8,graph,graph_bf16,fp16,best,best_working",
    )  # fmt: skip
    res = json.loads((tmp_path / "bench_gpu_k2.json").read_text())
    assert res["status"] == "measured" and res["device_type"] == "cuda"
    assert not [r for r in res["rows"] if "skipped" in r], res["rows"]
    for r in res["rows"]:
        assert r["frames_per_s"] > 0 and r["gpu_peak_mib"] > 0 and r["pinned"] is (r["variant"] != "baseline")
        if r["variant"] in ("product_pinned", "staged_u8", "graph"):
            assert r["max_abs_err_counts"] < 1e-2, r  # fp32 (TF32 convolutions) against the product
        elif r["variant"] != "best_working":
            assert abs(r["paper_psnr_delta_db"]) < 0.5, r  # half precision must not cost visible quality
