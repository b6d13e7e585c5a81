"""Results files say when, where, at which commit and on which engine they were measured (audit 26).

A speed number depends on the machine's load, the code, the libraries and the engine's weights; README's
tables are rendered from these files, so a table measured on an engine that the command no longer loads
must say so instead of passing for today's.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from benchmarks import readme_history, readme_speed
from benchmarks.common import write_result
from benchmarks.readme_render import ENGINES, engine_label, engine_today
from benchmarks.readme_tables import README, render_one
from sbd_stream.cli.run_info import NOT_A_CHECKOUT, git_state

UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def torch_threads():
    """bench_binning / bench_capacity set torch to one thread, as the service does: restored after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_a_results_file_has_date_commit_load_and_versions(tmp_path: Path) -> None:
    d = json.loads(write_result("bench_x", {"rows": []}, tmp_path / "x.json").read_text())
    assert UTC_ISO.match(d["date"]) and UTC_ISO.match(d["started"])
    assert re.fullmatch(r"[0-9a-f]{7,}", d["git"]) and isinstance(d["git_dirty"], bool)  # this checkout
    assert len(d["load_avg"]["start"]) == 3 and len(d["load_avg"]["end"]) == 3
    assert set(d["versions"]) == {"torch", "onnxruntime", "numpy", "pyzmq", "h5py"}
    assert d["versions"]["numpy"] and d["versions"]["torch"]


def test_outside_a_checkout_the_commit_is_empty_and_said_so(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"git": "", "git_dirty": None, "git_note": NOT_A_CHECKOUT}


def test_dirty_means_code_changed_not_a_results_file_written_earlier_in_the_session(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "benchmarks" / "results" / "a.json").write_text('{"new": 1}')  # the previous benchmark's
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["git_dirty"] is True


def test_bench_binning_records_the_engine_id_and_runs_torch_as_the_service_does(
    binning_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    from benchmarks import bench_binning

    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    torch.set_num_threads(2)
    args = [
        "--model",
        str(binning_engine_dir),
        "--size",
        "64",
        "--frames",
        "1",
        "--repeats",
        "1",
        "--bins",
        "4",
    ]
    bench_binning.main(args)
    d = json.loads((tmp_path / "bench_binning.json").read_text())
    sha = hashlib.sha256((binning_engine_dir / "model.onnx").read_bytes()).hexdigest()[:12]
    assert d["engine_id"].startswith(f"{binning_engine_dir.name}@{sha}/")
    assert torch.get_num_threads() == 1  # light_torch, as service/build.py and bench_capacity apply it


def test_bench_capacity_records_the_engine_id(binning_engine_dir: Path, torch_threads: None) -> None:
    from benchmarks import bench_capacity

    row = bench_capacity.per_worker(str(binning_engine_dir), "onnxruntime", "64x64", 4, 1, 0.01)
    sha = hashlib.sha256((binning_engine_dir / "model.onnx").read_bytes()).hexdigest()[:12]
    assert row["engine_id"].startswith(f"{binning_engine_dir.name}@{sha}/")


def _engine(root: Path, name: str, data: bytes) -> str:
    (root / name).mkdir(parents=True)
    (root / name / "model.onnx").write_bytes(data)
    return f"{name}@{hashlib.sha256(data).hexdigest()[:12]}"


def test_a_table_on_a_retired_engine_says_so_with_its_commit(tmp_path: Path) -> None:
    current = _engine(tmp_path, "eng-a", b"weights today")
    other = _engine(tmp_path, "eng-b", b"the new default")
    run = {"command": "python -m benchmarks.bench_x", "machine": {"git": "abc1234"}}
    # measured on today's weights of the engine the command loads: named, nothing more
    assert engine_label({**run, "engine_id": current + "/onnxruntime-fp32"}, "eng-a", tmp_path) == (
        f"engine `{current}`"
    )
    # the weights changed since (retrained), or the default is another engine now: retired, commit named
    old = {**run, "engine_id_at_commit": {"engine_id": "eng-a@000000000000"}}
    label = engine_label(old, "eng-a", tmp_path)
    assert "eng-a@000000000000" in label and "retired" in label and "abc1234" in label and current in label
    label = engine_label({**run, "engine_id": current}, "eng-b", tmp_path)
    assert "retired" in label and other in label
    # --model names the engine: that one is what the command loads today
    named = {**run, "command": "python -m benchmarks.bench_x --model eng-a", "engine_id": current}
    assert engine_label(named, "eng-b", tmp_path) == f"engine `{current}`"
    # an engine no clone holds
    gone = {**run, "command": "python -m benchmarks.bench_x --model engines/eng-z", "engine": "engines/eng-z"}
    assert "not in a clone" in engine_label(gone, "eng-a", tmp_path)


def test_the_speed_tables_name_the_engine_they_measured() -> None:
    """Each speed block names the engine its results file recorded, and says "retired" exactly when the
    command that opens it would load other weights today (read from the files: a rerun changes them)."""
    from benchmarks.readme_render import RESULTS, command, command_engine, recorded_engine

    text = README.read_text()
    default = "sbd-unet4-paper-twins"
    blocks = (("binning", "bench_binning"), ("capacity", "bench_capacity"), ("scale_out", "offline_dask"))
    for block, name in blocks:
        d = json.loads((RESULTS / f"{name}.json").read_text())
        body = render_one(text, block)
        rid = recorded_engine(d)
        assert rid and rid in body, block
        today = engine_today(command_engine(command(d), default), ENGINES)
        assert ("retired" in body) == (today is not None and rid != today), block
    retired = engine_label({"engine_id": "x@000000000000", "command": "python -m b"}, default)
    assert retired.count("retired") == 1


def test_each_h200_row_opens_with_its_own_command_and_the_torch_build() -> None:
    body = readme_speed.capacity_h200()
    rows = [ln for ln in body.splitlines() if ln.startswith("| `python -m benchmarks.bench_capacity")]
    assert len(rows) == 2
    assert "--model sbd-unet4-detector " in rows[0] and "--model engines/sbd-unet4x64-gpu " in rows[1]
    assert "not in a clone" in rows[1]
    assert "torch 2.11.0+cu130" in body and "not the project's pinned torch" in body


def _history_command(block: str) -> list[str]:
    return shlex.split(re.match(r"`([^`]*)`", block).group(1))


@pytest.mark.parametrize("make", [readme_history.table_5_1_detector, readme_history.gpu_runs_detector])
def test_a_history_command_reproduces_its_table_and_not_the_headline(make) -> None:
    args = _history_command(make())
    opts = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert opts["--test"] == "data/detector-test60pm.h5" and opts["--val"] == "data/detector.h5"
    assert opts["--world"].startswith("detector")  # writes table_5_1_detector*.json, never ..._paper.json
    assert "--out-dir" in opts and "--engine" in opts
    assert any("engines/sbd-unet4-detector" in a for a in args)


def test_the_dose_curve_history_names_its_engine_and_the_file_it_writes() -> None:
    block = readme_history.dose_curve_detector()
    args = _history_command(block)
    assert args[args.index("--engine") + 1] == "engines/sbd-unet4-detector"
    assert args[args.index("--world") + 1] == "detector"
    assert "writes `dose_curve_detector.json`" in block


def test_history_rows_say_until_when_an_engine_shipped() -> None:
    for make in (readme_history.table_5_1_detector, readme_history.gpu_runs_detector):
        body = make()
        table = [ln for ln in body.splitlines() if ln.startswith("| ")]
        assert not any(re.search(r"shipped\)|shipped \(", ln) for ln in table)
        assert "shipped until 2026-12-02, commit bb29a3f" in body


def test_the_demo_table_is_newest_first_and_says_when() -> None:
    body = readme_speed.demo()
    rows = [ln for ln in body.splitlines() if ln.startswith("| `sbd-stream demo")]
    whens = [re.search(r"\| (committed )?(\d{4}-\d\d-\d\dT[\d:]+Z)[ ,|]", r) for r in rows]
    assert all(whens), rows  # a date, or for older files when they were committed, labelled so
    stamps = [w.group(2) for w in whens]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert readme_speed.when({"date": "2026-12-07T10:00:00Z", "committed": {"date": "x"}}) == (
        "2026-12-07T10:00:00Z"
    )


def test_the_recorded_command_names_the_module_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu_session_report writes gpu_session_<tag>.json: its command must name gpu_session_report (it
    named benchmarks.gpu_session_h200, a module that does not exist)."""
    import sys

    script = str(Path("benchmarks") / "gpu_session_report.py")
    monkeypatch.setattr(sys, "argv", [script, "--tag", "h200"])
    d = json.loads(write_result("gpu_session_h200", {}, tmp_path / "g.json").read_text())
    assert d["command"] == "python -m benchmarks.gpu_session_report --tag h200"
