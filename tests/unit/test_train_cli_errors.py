"""`sbd-train` ends a bad input in one line `error: ...` (exit 2), before any work or run folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import make_tiny_engine
from typer.testing import CliRunner

from training.cli import app
from training.sim.synthetic_data import write_synthetic


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    good = write_synthetic(d / "syn.h5", n_structures=6, per_structure=2, size=32)
    (d / "garbage.h5").write_bytes(b"\0" * 4096)
    (d / "trunc.h5").write_bytes(good.read_bytes()[:5000])
    other = write_synthetic(d / "dose7.h5", n_structures=6, per_structure=2, size=32, dose=7.2)
    broken = make_tiny_engine(d / "broken")
    (broken / "model.pt").unlink()
    return {"good": good, "garbage": d / "garbage.h5", "trunc": d / "trunc.h5", "dose7": other,
            "broken": broken, "dir": d}  # fmt: skip


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env or {"SBD_TRACEBACK": ""})


TRAIN_CASES = [
    (["--data", "{dir}/nope.h5"], r"--data .*nope\.h5: no such file"),
    (["--data", "{garbage}"], r"--data .*garbage\.h5: not a readable HDF5 file"),
    (["--data", "{trunc}"], r"--data .*trunc\.h5: not a readable HDF5 file"),
    (["--preset", "bogus"], r"--preset: unknown preset 'bogus'; choose from default, "),
    (["--lr", "-1"], r"--lr: must be greater than 0"),
    (["--lr", "0"], r"--lr: must be greater than 0"),
    (["--device", "tpu"], r"--device: cpu, cuda, cuda:N or mps \(got 'tpu'\)"),
    (["--lr-schedule", "bogus"], r"--lr-schedule: Input should be 'plateau' or 'cosine'"),
    (["--amp", "fp8"], r"--amp: .*fp8"),
    (["--batch", "0"], r"--batch: Input should be greater than 0"),
    (["--max-steps", "0"], r"--max-steps: "),
    (["--max-minutes", "-1"], r"--max-minutes: "),
    (["--patch", "30"], r"--patch: patch 30 px is not a multiple of 4 px, which a 2-scale UNet needs"),
    (["--patch", "0"], r"--patch: "),
    (["--extra-data", "{dose7}"], r"dose7\.h5: dose 7\.2 .* extra training sets must match"),
    # NaN passed `w < 0` and inf made the draw probabilities NaN, after the run folder was made
    (
        ["--extra-data", "{good}", "--extra-data-weight", "nan"],
        r"^error: --extra-data-weight: nan is not a finite non-negative number",
    ),
    (
        ["--extra-data", "{good}", "--extra-data-weight", "inf"],
        r"^error: --extra-data-weight: inf is not a finite non-negative number",
    ),
    (
        ["--extra-data", "{good}", "--extra-data-weight", "-1"],
        r"^error: --extra-data-weight: -1\.0 is not a finite non-negative number",
    ),
    (["--init-from", "{dir}/nonexist"], r"--init-from .*nonexist: no engine"),
    (["--init-from", "{broken}"], r"--init-from .*broken: .* lacks model\.pt"),
]


@pytest.mark.parametrize(("extra", "expected"), TRAIN_CASES)
def test_train_refuses_bad_inputs_in_one_line_and_leaves_no_run_folder(
    files: dict[str, Path], tmp_path: Path, extra: list[str], expected: str
) -> None:
    args = ["train", "--preset", "tiny", "--data", str(files["good"]), "--out-dir", str(tmp_path / "runs")]
    res = _run(*args, *[a.format(**files) for a in extra])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()


def test_verbose_or_sbd_traceback_shows_the_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(files["good"]),
        "--out-dir",
        str(tmp_path),
        "--batch",
        "0",
    ]
    for res in (_run("--verbose", *args), _run(*args, env={"SBD_TRACEBACK": "1"})):
        assert res.exit_code == 1 and res.exception is not None and "error: " not in res.stderr


def test_other_commands_refuse_bad_inputs_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    good, out = str(files["good"]), str(tmp_path / "out")
    cases = [
        (["export", str(tmp_path / "nonexist"), "--engine-dir", out], "no such run"),
        # an engine is checked before minutes of classical baselines run
        (["evaluate", "--data", good, "--engine", f"Y={tmp_path}/nonexist", "--out-dir", out], "--engine Y="),
        (["evaluate-detector", "--test", good, "--val", good, "--out-dir", out, "--baseline", "Lowpass"],
         "--baseline: unknown 'Lowpass'; choose from Raw, Low-pass filter"),
        (["likelihood-study", "--data", good, "--out", out], "--engine: --denoiser engine"),
        (["simulate", "--preset", "tiny", "--out", str(files["trunc"])], "not a readable HDF5 file"),
    ]  # fmt: skip
    for args, expected in cases:
        res = _run(*args)
        assert res.exit_code == 2 and res.stderr.startswith("error: "), (args, res.output)
        assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not Path(out).exists()


def test_evaluate_detector_refuses_a_file_that_is_not_a_test_split(
    files: dict[str, Path], tmp_path: Path
) -> None:
    import h5py

    train_view = tmp_path / "train-view.h5"
    write_synthetic(train_view, n_structures=6, per_structure=2, size=32)
    with h5py.File(train_view, "a") as f:
        f.attrs["view"] = "train"
    res = _run("evaluate-detector", "--test", str(train_view), "--val", str(files["good"]),
               "--out-dir", str(tmp_path / "o"), "--engine", f"E={files['broken']}")  # fmt: skip
    assert res.exit_code == 2 and "--test: " in res.stderr and "not a test split (view 'train'" in res.stderr
    assert not (tmp_path / "o").exists()


def _words(text: str) -> str:
    """Help text with rich's box drawing and line breaks taken out."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def test_train_help_lists_every_preset_and_gpu_recipe_help_names_its_default_run() -> None:
    from training.cli.train import PRESETS
    from training.train.presets import TRAINING_PRESETS

    assert PRESETS.split(", ") == list(TRAINING_PRESETS)
    wide = {"COLUMNS": "400", "SBD_TRACEBACK": ""}  # rich wraps long help at hyphens otherwise
    help_text = _words(_run("train", "--help", env=wide).output)
    assert all(name in help_text for name in ("fov245-paper", "tiny", "fov13-detector"))
    recipe_help = _words(_run("gpu-recipe", "--help", env=wide).output)
    plan = _run("gpu-recipe", "--dry-run", "--steps", "train,export").output
    # a candidate's name: the quality engine's own (what offline work picks on a GPU) is installed only
    # by `sbd-train install-quality`, after the quality checks (audit 24)
    assert "sbd-unet4x64-paper-gpu for the paper-quality preset" in recipe_help
    assert "runs/sbd-unet4x64-paper-gpu" in plan and "--engine-dir engines/sbd-unet4x64-paper-gpu" in plan
    assert "sbd-train install-quality engines/sbd-unet4x64-paper-gpu" in plan


@pytest.mark.parametrize(
    "where",
    [
        ["--dry-run", "--name", "sbd-unet4x64-paper"],
        ["--dry-run", "--engine-dir", "engines/sbd-unet4x64-paper"],
        ["--allow-cpu", "--device", "cpu", "--name", "sbd-unet4x64-paper"],  # before the training step
    ],
)
def test_gpu_recipe_refuses_to_export_under_the_quality_engines_name(
    where: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = _run("gpu-recipe", "--steps", "train,export", *where)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "quality engine's own folder (sbd-unet4x64-paper)" in lines[0] and "install-quality" in lines[0]
    assert list(tmp_path.iterdir()) == []
