"""Every benchmark writes where ``$SBD_BENCH_RESULTS`` says, with its provenance (client audit h29).

docs/scale-out.md tells a site sizing its own machine to set ``SBD_BENCH_RESULTS=/some/folder``, "where
every benchmark then writes"; README says each results file records the date, commit, load and library
versions. bench_curve, bench_dectris, bench_simulation, bench_likelihood and bench_training wrote their
own files straight into ``benchmarks/results/`` (over the numbers README renders) and without the date,
commit, load or versions; bench_offline_dask wrote a local-time date and no load or versions.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import bench_curve, bench_dectris
from benchmarks.common import RESULTS

UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
BENCH = Path(bench_curve.__file__).resolve().parent


def test_bench_curve_writes_under_sbd_bench_results_with_date_commit_load_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = (RESULTS / "curve.json").read_bytes()
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    assert bench_curve.main(["--mb", "0.05", "--seconds", "0.2"]) == 0  # real CURVE on loopback
    assert (RESULTS / "curve.json").read_bytes() == committed  # the committed numbers untouched
    d = json.loads((tmp_path / "curve.json").read_text())
    assert d["benchmark"] == "bench_curve" and d["message_mb"] == 0.05
    assert UTC_ISO.match(d["date"]) and UTC_ISO.match(d["started"])
    assert re.fullmatch(r"[0-9a-f]{7,}", d["git"]) and isinstance(d["git_dirty"], bool)
    assert len(d["load_avg"]["start"]) == 3 and len(d["load_avg"]["end"]) == 3
    assert d["versions"]["pyzmq"] and d["versions"]["numpy"]
    assert d["machine"]["cpus"] and d["machine"]["zmq"]  # its own machine fields kept (README shows cpus)


def test_bench_dectris_default_files_follow_sbd_bench_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    assert bench_dectris.default_out("uint16") == tmp_path / "dectris.json"
    assert bench_dectris.default_out("uint8") == tmp_path / "dectris_uint8.json"


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_no_benchmark_writes_into_the_committed_results_folder_by_itself(path: Path) -> None:
    """A benchmark names its results folder only through ``benchmarks.common`` (``results_dir``,
    ``out_path``, ``write_result``); the README renderers read the committed folder and may name it."""
    if path.name == "common.py" or path.name.startswith("readme_"):
        return
    src = path.read_text()
    assert not re.search(r"""(parent|parents\[\d\])\s*/\s*["']results["']""", src), path.name


def test_bench_stack_read_dates_its_file_in_utc_as_every_results_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own local-time ``date`` (``...+0000``) replaced the UTC one ``write_result`` records, so the
    file did not compare as text with the others (README's "measured" column sorts and shows them)."""
    from benchmarks import bench_stack_read

    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench_stack_read", "--frames", "32", "--size", "16"])
    bench_stack_read.main()  # real TIFF / NPY / HDF5 files in a temporary folder
    d = json.loads((tmp_path / "stack_read.json").read_text())
    assert UTC_ISO.match(d["date"]) and d["frames"] == 32 and d["load_avg"]["end"]


@pytest.mark.slow
def test_bench_offline_dask_records_utc_date_load_and_versions(
    tmp_path: Path, binning_engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It wrote a local-time ``date`` and no load average or library versions (a Dask local cluster of
    one worker on loopback, real recordings in a temporary folder)."""
    from benchmarks import bench_offline_dask

    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    args = ["--model", str(binning_engine_dir), "--size", "128", "--frames", "4", "--chunk-frames", "2"]
    monkeypatch.setattr(sys, "argv", ["bench_offline_dask", *args, "--workers", "1"])
    bench_offline_dask.main()
    d = json.loads((tmp_path / "offline_dask.json").read_text())
    assert UTC_ISO.match(d["date"]) and d["benchmark"] == "bench_offline_dask"
    assert len(d["load_avg"]["start"]) == 3 and d["versions"]["onnxruntime"]
    assert d["machine"]["torch_threads"] >= 1  # machine() kept, README's scale_out reads its commit


def test_compute_trend_on_a_clone_without_data_says_what_is_missing_and_how_to_make_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's `python -m benchmarks.compute_trend` needs the git-ignored data/ sets: it ended in an h5py
    traceback; now one line and exit status 2, before any engine is loaded."""
    from benchmarks import compute_trend

    test, val = tmp_path / "paper-test60pm.h5", tmp_path / "paper.h5"
    assert compute_trend.main(["--test", str(test), "--val", str(val), "--max-test-images", "1"]) == 2
    err = capsys.readouterr().err
    assert str(test) in err and str(val) in err and "sbd-train simulate --preset paper" in err
