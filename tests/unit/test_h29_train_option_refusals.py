"""`sbd-train train` refuses these option values in one `error:` line, status 2, before a run folder.

Found (session 29, a user trying demanding inputs; docs/training.md, "Errors": option values are checked
before a run folder is made):

- ``--lr inf`` trained NaN weights and exited 0 ("best val PSNR -inf dB");
- ``--device cuda`` (or ``cuda:N`` past the machine's GPUs) on a machine without that GPU ended in torch's
  ``AssertionError: Torch not compiled with CUDA enabled``, a 119-line traceback, status 1;
- ``--seed -5`` made the run folder, started, and died on NumPy's "expected non-negative integer"
  without naming the option;
- ``--extra-data-weight 1`` without ``--extra-data`` was taken silently (the count check came after an
  "all weights are 1" shortcut), though the weights are documented as one per ``--extra-data``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from training.cli import app
from training.sim.synthetic_data import write_synthetic


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "syn.h5"
    return write_synthetic(path, n_structures=6, per_structure=2, size=32)


MISSING_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: on any machine

CASES = [
    (["--lr", "inf"], r"^error: --lr: must be greater than 0 and finite \(got inf\)$"),
    (["--device", MISSING_GPU], rf"^error: --device {MISSING_GPU}: this machine has .*; use --device cpu"),
    (["--seed", "-5"], r"^error: --seed: .*greater than or equal to 0 \(got -5\)$"),
    (["--extra-data-weight", "1"],
     r"^error: .*\(--extra-data-weight\): one per extra data set \(--extra-data: 0\), got 1"),
    (["--extra-data", "{good}", "--extra-data-weight", "1", "--extra-data-weight", "1"],
     r"^error: .*\(--extra-data-weight\): one per extra data set \(--extra-data: 1\), got 2"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "expected"), CASES)
def test_bad_values_end_in_one_line_before_the_run_folder(
    good: Path, tmp_path: Path, extra: list[str], expected: str
) -> None:
    args = ["train", "--preset", "tiny", "--data", str(good), "--out-dir", str(tmp_path / "runs")]
    args += ["--max-steps", "1", "--threads", "1"]
    res = CliRunner().invoke(app, [*args, *[a.format(good=good) for a in extra]], env={"SBD_TRACEBACK": ""})
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), res.stderr
    assert not (tmp_path / "runs").exists()


EVALUATE_CASES = [
    (["--max-test-images", "0"], r"^error: --max-test-images: .*greater than or equal to 1 \(got 0\)$"),
    (["--max-test-images", "-3"], r"^error: --max-test-images: .*greater than or equal to 1 \(got -3\)$"),
    (["--bm3d-test-images", "-1"], r"^error: --bm3d-test-images: .*greater than or equal to 1 \(got -1\)$"),
    (["--seed", "-1"], r"^error: --seed: .*greater than or equal to 0 \(got -1\)$"),
]
"""``sbd-train evaluate`` (Table 5.1): 0 test images ended in an IndexError traceback (status 1), -3 in
NumPy's "Number of samples, -3, must be non-negative." without the option, ``--bm3d-test-images -1`` ran
BM3D on every test image, ``--seed -1`` failed on the first noise draw without naming the option."""


@pytest.mark.parametrize(("extra", "expected"), EVALUATE_CASES)
def test_evaluate_refuses_bad_counts_and_seeds_in_one_line(
    good: Path, tmp_path: Path, extra: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(good), "--classical-only", "--no-figure", "--out-dir", str(out)]
    res = CliRunner().invoke(app, [*args, *extra], env={"SBD_TRACEBACK": ""})
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), res.stderr
    assert not out.exists()
