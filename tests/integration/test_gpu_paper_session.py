"""benchmarks/gpu_paper_session.sh, the one call a GPU lease gets, run end to end on the CPU (2 steps each).

A failed call costs a lease's minutes, so the script's own shell logic (unpacking the carried worlds in
parts over two calls, the extra-world weights, the trainings side by side, the quality run continued from
an engine, the exports, the archive) is exercised here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import pytest

from benchmarks.gpu_data_pack import pack
from training.sim.synthetic_data import write_synthetic

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_paper_session_script_trains_both_engines_and_archives_them(tmp_path: Path) -> None:
    for name in ("benchmarks", "training", "sbd_stream", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "engines").mkdir()  # the exports land here, not in the repository's engines/
    for eng in ("sbd-unet4-paper-twins", "sbd-unet3s2-paper-twins", "sbd-unet4x64-paper-ft"):
        (tmp_path / "engines" / eng).symlink_to(ROOT / "engines" / eng)
    kit = tmp_path / ".devkit"
    kit.mkdir()
    main = write_synthetic(tmp_path / "p.h5", n_structures=8, per_structure=2, size=224)
    twins = write_synthetic(tmp_path / "t.h5", n_structures=8, per_structure=2, size=224, seed=3)
    pack(main, kit / "paper-q.h5", every=2, offset=0)  # the first call carries half the main world
    pack(twins, kit / "paper.paper-twins-q.h5", every=2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OUT": str(tmp_path / "out"),
        "RECIPE_EXTRA": "--allow-cpu --device cpu --max-steps 2 --threads 1",
        "TESTS": "0",
        "SBD_CACHE_DIR": str(tmp_path / "cache"),
    }
    script = ["bash", str(ROOT / "benchmarks" / "gpu_paper_session.sh")]
    res = subprocess.run(
        script, cwd=tmp_path, env={**env, "CARRY_ONLY": "1", "OUT": str(tmp_path / "out0")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0 and "carry only: done" in res.stdout, res.stdout + res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    pack(main, kit / "paper-q.h5", every=2, offset=1)  # the second call: the other half, and training
    env |= {"QUALITY_INIT": "sbd-unet4x64-paper-ft", "QUALITY_BATCH": "2", "QUALITY_EQUIV": "0.5"}
    env["QUALITY_EXTRA"] = "--patch 160"
    res = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log
    assert "extra worlds: paper-twins (weights 2)" in log
    with h5py.File(tmp_path / "data" / "paper.h5", "r") as f:
        assert f["images"].shape[0] == 16 and sorted(f.attrs["packed_offsets"]) == [0, 1]
    with h5py.File(tmp_path / "data" / "paper.paper-twins.h5", "r") as f:
        assert f["images"].shape[0] == 8  # the same part twice: added once
    qcfg = json.loads((tmp_path / "runs" / "sbd-unet4x64-paper-gpu" / "config.json").read_text())
    assert (qcfg["batch"], qcfg["equivariance_weight"], qcfg["augment"]["patch"]) == (2, 0.5, 160)
    assert qcfg["init_from"].endswith("sbd-unet4x64-paper-ft")
    assert "quality rc=0" in log and "live rc=0" in log and "fast rc=0" in log, log
    with tarfile.open(tmp_path / "out" / "paper_session.tgz") as tar:
        names = tar.getnames()
    for eng in ("sbd-unet4x64-paper-gpu", "sbd-unet4-paper-gpu", "sbd-unet3s2-paper-gpu"):
        assert f"engines/{eng}/model.onnx" in names and f"engines/{eng}/card.json" in names
        assert f"runs/{eng}/log.jsonl" in names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "fast.log", "live.log", "paper_session.tgz", "quality.log", "session.log",
    ]  # fmt: skip
