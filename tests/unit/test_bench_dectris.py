"""bench_dectris: one results file per dtype, and README's cell for a codec that was not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_dectris, readme_speed


def test_each_dtype_has_its_own_results_file() -> None:
    assert bench_dectris.default_out("uint16").name == "dectris.json"
    assert bench_dectris.default_out("uint8").name == "dectris_uint8.json"


def _run(dtype: str, backends: list[str]) -> dict:
    ingest = [
        {"input": k, "frames_per_s": 20.0, "GB_per_s_pixels": 0.5}
        for k in ("wire-v1-raw", "dectris-v1-bslz4")
    ]
    return {
        "command": f"python -m benchmarks.bench_dectris --frames 4 --dtype {dtype}",
        "frame": {"shape": [3838, 3710], "dtype": dtype, "bslz4_bytes": 3_600_000},
        "codec_backends": backends,
        "ingest": ingest,
        "decompress": [{"backend": b, "ms_per_frame": 10.0} for b in backends],
        "record": [
            {"mode": "recompress", "ms_per_frame": 80.0},
            {"mode": "direct_chunk", "ms_per_frame": 3.0},
        ],
    }


def test_a_codec_not_installed_reads_n_a_not_an_empty_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dectris.json").write_text(json.dumps(_run("uint16", ["hdf5plugin"])))
    (tmp_path / "dectris_uint8.json").write_text(json.dumps(_run("uint8", ["dectris", "hdf5plugin"])))
    monkeypatch.setattr(readme_speed, "RESULTS", tmp_path)
    monkeypatch.setattr(readme_speed, "load", lambda name: json.loads((tmp_path / name).read_text()))
    row = next(line for line in readme_speed.dectris().splitlines() if line.startswith("| decompressing"))
    uint16, uint8 = row.strip("| ").split(" | ")[1:]
    assert uint16.startswith("n/a (optional `dectris-compression` not installed) / 10.0")
    assert uint8 == "10.0 / 10.0 ms"
