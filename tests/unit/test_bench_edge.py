"""bench_edge: each case is the detector state it is named after (the flags the edge reports), and the
run writes its table where ``SBD_BENCH_RESULTS`` says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_edge
from sbd_stream.service.edge import clean_pixels, hot_threshold


def test_each_case_is_what_it_is_named() -> None:
    flags = {
        name: clean_pixels(d, hot_threshold(bench_edge.DOSE))[1]
        for name, d in bench_edge.cases((64, 48)).items()
    }
    assert flags == {
        "clean": {},
        "one hot pixel": {"hot_pixels": 1},
        "hot column": {"hot_pixels": 64},
        "dtype maximum": {"saturated_pixels": 1},
        "10x the dose": {"bright_pixels": 1},
    }


def test_a_run_writes_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    assert bench_edge.main(["--repeats", "2", "--sizes", "40x30"]) == 0
    got = json.loads((tmp_path / "bench_edge.json").read_text())
    assert [r["case"] for r in got["rows"]] == list(bench_edge.cases((8, 8)))
    assert all(r["ms"] > 0 for r in got["rows"])
