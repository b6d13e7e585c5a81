"""`sbd-stream denoise --compression`: an output that readers without hdf5plugin read (audit h36).

The output was always bitshuffle-LZ4, so plain h5py, MATLAB, Fiji and h5dump could not read the denoised
frames. Each output here is read by a separate Python that never imports hdf5plugin and sees no HDF5
plugin folder: gzip and none read there equal to the default file's frames, and the default file fails
there (what makes the check mean something). Both writers are covered: ``--scheduler none`` (``denoise_file``)
and the partial (a one-chunk job runs in-process through ``open_partial``, as a Dask job writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from ci_require import require_program
from helpers_offline import frames_done, write_stack
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import DenoiseSettings
from sbd_stream.formats.compression import COMPRESSIONS, stored_compression
from sbd_stream.service import offline_dask as od
from sbd_stream.service.offline import denoise_file
from sbd_stream.service.offline_partial import CompressionDiffers

pytestmark = pytest.mark.integration
runner = CliRunner()

PLAIN_READER = """
import sys
import h5py
import numpy as np
with h5py.File(sys.argv[1], "r") as f:
    frames = f["denoised"][:]
assert "hdf5plugin" not in sys.modules, "hdf5plugin was imported"
np.save(sys.argv[2], frames)
"""


def _plain_read(path: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """``path``'s frames as a Python with h5py alone reads them (no hdf5plugin, an empty plugin folder)."""
    empty = tmp / "no-plugins"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(empty)}
    dest = tmp / f"{path.stem}-plain.npy"
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_READER, str(path), str(dest)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp,
    )  # fmt: skip
    return run, dest


def _denoise(inp: Path, out: Path, engine: Path, *extra: str) -> Any:
    return runner.invoke(
        app, ["denoise", str(inp), str(out), "--model", str(engine), "--engine", "onnxruntime", *extra]
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "path",
    [["--scheduler", "none"], ["--scheduler", "local", "--chunk-frames", "16"]],
    ids=["single", "partial"],
)
def test_gzip_and_none_outputs_read_without_hdf5plugin(
    path: list[str], binning_engine_dir: Path, tmp_path: Path
) -> None:
    inp = write_stack(tmp_path / "in.h5", 4, (64, 48), seed=1)  # 4 frames: one chunk, no cluster started
    outs = {c: tmp_path / f"out-{c}.h5" for c in COMPRESSIONS}
    for c, out in outs.items():
        extra = [] if c == "bitshuffle-lz4" else ["--compression", c]  # the default: no option
        res = _denoise(inp, out, binning_engine_dir, *path, *extra)
        assert res.exit_code == 0, res.output
        with h5py.File(out, "r") as f:
            assert f.attrs["compression"] == c
            assert stored_compression(f["denoised"]) == c
    with h5py.File(outs["bitshuffle-lz4"], "r") as f:  # hdf5plugin is imported in this process
        expected = f["denoised"][:]
    for c in ("gzip", "none"):
        run, dest = _plain_read(outs[c], tmp_path)
        assert run.returncode == 0, run.stderr[-800:]
        np.testing.assert_array_equal(np.load(dest), expected)
    run, _ = _plain_read(outs["bitshuffle-lz4"], tmp_path)  # the test means something: this one fails
    assert run.returncode != 0 and "OSError" in run.stderr, run.stderr[-800:]


@pytest.mark.timeout(120)
def test_a_gzip_output_opens_in_hdf5_1_10(binning_engine_dir: Path, tmp_path: Path) -> None:
    """HDF5 1.10 (Debian's h5dump; MATLAB's and Fiji's libraries are 1.8-1.14) reads the frames."""
    h5dump = require_program("h5dump", reason="h5dump (Debian hdf5-tools) reads the output as HDF5 1.10")
    inp = write_stack(tmp_path / "in.h5", 2, (32, 24), seed=2)
    out = tmp_path / "out.h5"
    assert (
        _denoise(inp, out, binning_engine_dir, "--scheduler", "none", "--compression", "gzip").exit_code == 0
    )
    binary = tmp_path / "frames.bin"
    cmd = [h5dump, "-d", "/denoised", "-b", "LE", "-o", str(binary), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-500:]
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(np.fromfile(binary, np.float32).reshape(2, 32, 24), f["denoised"][:])


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_a_bad_compression_is_one_line_before_any_work(scheduler: str, tmp_path: Path) -> None:
    inp = write_stack(tmp_path / "in.h5", 2, (32, 24))
    out = tmp_path / "out.h5"
    # no such engine: the refusal comes before the engine (or anything else) is looked at
    res = _denoise(inp, out, tmp_path / "no-engine", "--scheduler", scheduler, "--compression", "lz4")
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: --compression must be one of bitshuffle-lz4, gzip, none, not 'lz4'"], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_the_python_api_refuses_a_bad_compression(binning_engine_dir: Path, tmp_path: Path) -> None:
    inp = write_stack(tmp_path / "in.h5", 2, (32, 24))
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    with pytest.raises(ValueError, match="bitshuffle-lz4, gzip, none, not 'zstd'"):
        denoise_file(inp, tmp_path / "a.h5", settings=es, compression="zstd")
    with pytest.raises(ValueError, match="bitshuffle-lz4, gzip, none, not 'GZIP'"):
        od.denoise(inp, tmp_path / "b.h5", es=es, scheduler="local", compression="GZIP")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


@pytest.mark.timeout(120)
def test_a_resume_keeps_the_partials_compression_or_refuses_another(
    binning_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of one dataset share its filters: a resume either keeps the partial's compression
    (``--compression`` not given, or the same) or is refused in one line, the partial kept."""
    inp = write_stack(tmp_path / "in.h5", 20, (64, 48), seed=3)
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    denoise_file(inp, ref, settings=es, compression="none")
    src, real = od.inspect_stack(inp), od.denoise_chunk
    partial, side = Path(f"{out}.partial"), Path(f"{out}.partial.json")

    def dies_at_12(*args: Any) -> Any:
        if args[3] == 12:
            raise KeyboardInterrupt
        return real(*args)

    def interrupted(compression: str) -> None:
        monkeypatch.setattr(od, "denoise_chunk", dies_at_12)
        with pytest.raises(KeyboardInterrupt):
            od.denoise_distributed(
                src, out, es, scheduler="none", batch=2, chunk_frames=4, compression=compression
            )
        monkeypatch.setattr(od, "denoise_chunk", real)
        assert frames_done(side) == 12

    job: dict[str, Any] = {"scheduler": "none", "batch": 2, "chunk_frames": 4}
    interrupted("gzip")
    with pytest.raises(CompressionDiffers) as refused:
        od.denoise_distributed(src, out, es, **job, compression="none")
    assert str(refused.value) == (
        f"{partial} was started with --compression gzip: give --compression gzip (or none of it) to resume "
        "it, or --no-resume to start out.h5 over with --compression none"
    )
    assert frames_done(side) == 12 and not out.exists()  # nothing written, the partial kept
    s = od.denoise_distributed(src, out, es, **job)  # not given: the partial's gzip kept
    assert s["resumed_from"] == 12
    with h5py.File(out, "r") as f, h5py.File(ref, "r") as r:
        assert stored_compression(f["denoised"]) == "gzip" and f.attrs["compression"] == "gzip"
        np.testing.assert_array_equal(f["denoised"][:], r["denoised"][:])

    out.unlink()
    interrupted("gzip")
    s = od.denoise_distributed(src, out, es, **job, compression="gzip")  # the same one given: resumed
    assert s["resumed_from"] == 12
    out.unlink()
    interrupted("gzip")
    s = od.denoise_distributed(src, out, es, **job, compression="none", resume=False)  # the way out
    assert s["resumed_from"] == 0
    with h5py.File(out, "r") as f:
        assert (
            stored_compression(f["denoised"]) == "none"
            and json.loads(json.dumps(f.attrs["compression"])) == "none"
        )


def test_replay_offline_takes_compression_for_its_out(binning_engine_dir: Path, tmp_path: Path) -> None:
    """``replay --offline --out`` writes through the same output: ``--compression`` there is the
    output's (it was refused as a live-only option with ``--offline``)."""
    from sbd_stream.config import RecordSettings
    from sbd_stream.metrics import Metrics
    from sbd_stream.sinks.recorder import Recorder, RecordItem

    rec = Recorder(
        RecordSettings(directory=tmp_path / "rec", min_free_bytes=0, compress_threads=0),
        Metrics(), card={"name": "tiny"}, run_config={},
        sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45},
    )  # fmt: skip
    rng = np.random.default_rng(3)
    for q in range(3):
        rec.write(RecordItem("raw", "run", q, 100.0 + q, rng.poisson(0.45, (64, 48)).astype(np.uint16)))
    rec.write(RecordItem("series_end", "run"))  # closes its file (as test_h33_rec_offline_vs_live)
    source = tmp_path / "rec" / "run.nxs"
    out = tmp_path / "off.h5"
    res = runner.invoke(
        app,
        ["replay", str(source), "--offline", "--out", str(out), "--scheduler", "none",
         "--compression", "gzip", "--model", str(binning_engine_dir), "--engine", "onnxruntime"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert stored_compression(h5py.File(out, "r")["denoised"]) == "gzip"
    run, dest = _plain_read(out, tmp_path)
    assert run.returncode == 0, run.stderr
    assert np.load(dest).shape == (3, 64, 48)
