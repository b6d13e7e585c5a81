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
