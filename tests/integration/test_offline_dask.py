"""Offline denoising on a Dask cluster: equal to `denoise_file` bit for bit, resumable after a kill.

One 2-worker LocalCluster serves the module (its address goes through the `tcp://` path); the kill
test starts the real CLI with its own local cluster in a new session and SIGKILLs the whole group.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers_offline import SAMPLING, SBD, assert_same_output, write_recording, write_stack
from helpers_procs import group_alive, group_gone
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import DenoiseSettings
from sbd_stream.service import offline_dask as od
from sbd_stream.service.offline import denoise_file

pytestmark = pytest.mark.integration


# ---- pure helpers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "chunk", "batch"), [(40, 5, 2), (40, 16, 2), (7, 4, 3), (1, 16, 4), (64, 16, 16)]
)
def test_plan_chunks_are_whole_batches_and_cover_every_frame(n: int, chunk: int, batch: int) -> None:
    chunks = od.plan_chunks(n, chunk, batch)
    size = od.chunk_size(chunk, batch)
    assert size % batch == 0 and size >= chunk and size - chunk < batch
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(chunks))  # contiguous, in order
    assert all(b - a == size for a, b in chunks[:-1])  # every chunk but the last is full
    assert 0 < chunks[-1][1] - chunks[-1][0] <= size  # the last one may be short
    assert all(a % batch == 0 for a, _ in chunks)  # chunk batches are the single-process batches


def test_plan_chunks_examples_and_errors() -> None:
    assert od.plan_chunks(40, 5, 2) == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 36), (36, 40)]
    assert od.plan_chunks(0, 16, 2) == []
    with pytest.raises(ValueError):
        od.plan_chunks(10, 0, 2)
    with pytest.raises(ValueError):
        od.plan_chunks(10, 4, 0)
    assert od.default_workers(3, 16) == 3 and od.default_workers(100, 2) == 2
    assert od.default_threads(16, 2) == 8 and od.default_threads(2, 4) == 1


def test_resolve_detector_like_denoise_file() -> None:
    f = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0}
    assert od.resolve_detector(f, {"pixel_size_A": None}) == f
    assert od.resolve_detector(f, {"counts_per_px": 0.9}) == {"pixel_size_A": 0.06, "counts_per_px": 0.9}
    assert od.resolve_detector(f, {"pixel_size_A": 0.12}) == {"pixel_size_A": 0.12, "dose_e_per_A2": 125.0}


# ---- a 2-worker cluster -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:  # fmt: skip
        yield cluster.scheduler_address


@pytest.mark.timeout(120)
def test_two_workers_equal_single_process_bit_for_bit(
    scheduler: str, binning_engine_dir: Path, tmp_path: Path
) -> None:
    inp = write_stack(tmp_path / "in.h5", 40, (96, 80))
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    denoise_file(inp, tmp_path / "ref.h5", settings=es.model_copy(update={"batch_frames": 2}))
    s = od.denoise(inp, tmp_path / "dask.h5", es=es, scheduler=scheduler, batch=2, chunk_frames=5)
    assert s["scheduler"] == scheduler and s["workers"] == 2
    assert (s["chunks"], s["chunk_frames"], s["frames"], s["resumed_from"]) == (7, 6, 40, 0)
    assert s["bin"] == 4 and s["pixel_size_A"] == 0.06
    assert set(s["engine_loads_per_worker"]) == {1}  # the engine was loaded once per worker, not per chunk
    assert_same_output(tmp_path / "ref.h5", tmp_path / "dask.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.h5", "in.h5", "ref.h5"]  # no partial left


@pytest.mark.timeout(120)
def test_a_page_by_page_tiff_on_workers_equals_single_process_and_is_let_go(
    scheduler: str, binning_engine_dir: Path, tmp_path: Path
) -> None:
    """Workers keep the input open across their chunks (a page-by-page TIFF reopened per chunk was
    quadratic in its pages: ``benchmarks/bench_stack_read.py``) and close it when the job ends."""
    import tifffile
    from distributed import Client

    from sbd_stream.sources import stack_cache

    frames = np.random.default_rng(3).poisson(0.45, (30, 64, 48)).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "in.tif") as tw:
        for fr in frames:
            tw.write(fr)
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    denoise_file(tmp_path / "in.tif", tmp_path / "ref.h5", settings=es, detector=SAMPLING)
    s = od.denoise(tmp_path / "in.tif", tmp_path / "dask.h5", es=es, detector=SAMPLING, scheduler=scheduler)
    assert s["chunks"] == 2 and s["frames"] == 30
    assert_same_output(tmp_path / "ref.h5", tmp_path / "dask.h5")
    with Client(scheduler) as c:
        assert set(c.run(lambda: len(stack_cache._OPEN)).values()) == {0}


@pytest.mark.timeout(120)
def test_torch_backend_is_identical_when_threads_are_pinned(
    scheduler: str, binning_engine_dir: Path, tmp_path: Path
) -> None:
    """torch's CPU results change with the thread count and with the batch (1 frame vs 2): both sides use
    one thread, and --chunk-frames 3 is rounded up to 4 so that no chunk splits a batch of 2."""
    inp = write_stack(tmp_path / "in.h5", 11, (64, 64), seed=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = DenoiseSettings(engine="torch", model=str(binning_engine_dir), batch_frames=2)
        denoise_file(inp, tmp_path / "ref.h5", settings=ref)
    finally:
        torch.set_num_threads(before)
    es = DenoiseSettings(engine="torch", model=str(binning_engine_dir), threads_per_worker=1)
    s = od.denoise(inp, tmp_path / "dask.h5", es=es, scheduler=scheduler, batch=2, chunk_frames=3)
    assert (s["chunks"], s["chunk_frames"], s["threads_per_worker"]) == (3, 4, 1)
    assert_same_output(tmp_path / "ref.h5", tmp_path / "dask.h5")


@pytest.mark.timeout(60)
def test_one_chunk_runs_in_process_without_a_cluster(
    binning_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative input names the source as given, as denoise_file does
    inp = Path("in.h5")
    write_stack(inp, 5, (64, 48), seed=2)
    denoise_file(
        inp,
        tmp_path / "ref.h5",
        settings=DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir)),
    )
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    s = od.denoise(inp, tmp_path / "one.h5", es=es, scheduler="local")  # 5 frames < one 16-frame chunk
    assert s["scheduler"] == "in-process (one chunk)" and s["chunks"] == 1
    assert_same_output(tmp_path / "ref.h5", tmp_path / "one.h5")
    s = od.denoise(inp, tmp_path / "none.h5", es=es, scheduler="none")  # `none`: denoise_file itself
    assert s["scheduler"] == "in-process"
    assert_same_output(tmp_path / "ref.h5", tmp_path / "none.h5")
    with pytest.raises(ValueError, match="--scheduler"):
        od.denoise(inp, tmp_path / "x.h5", es=es, scheduler="http://elsewhere")


@pytest.mark.timeout(60)
def test_resume_continues_at_frames_done_and_a_changed_run_starts_over(
    binning_engine_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inp = write_stack(tmp_path / "in.h5", 20, (64, 48), seed=3)
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    denoise_file(inp, ref, settings=DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir)))
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    src = od.inspect_stack(inp)
    real = od.denoise_chunk

    def dies_at_12(*args):
        if args[3] == 12:
            raise KeyboardInterrupt
        return real(*args)

    def interrupted_run(batch: int) -> None:
        monkeypatch.setattr(od, "denoise_chunk", dies_at_12)
        with pytest.raises(KeyboardInterrupt):
            od.denoise_distributed(src, out, es, scheduler="none", batch=batch, chunk_frames=4)
        monkeypatch.setattr(od, "denoise_chunk", real)

    interrupted_run(batch=2)
    side = json.loads((tmp_path / "out.h5.partial.json").read_text())
    assert side["frames_done"] == 12 and not out.exists()
    s = od.denoise_distributed(src, out, es, scheduler="none", batch=2, chunk_frames=4)
    assert s["resumed_from"] == 12
    assert_same_output(ref, out)
    assert not (tmp_path / "out.h5.partial").exists() and not (tmp_path / "out.h5.partial.json").exists()

    out.unlink()
    interrupted_run(batch=2)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service"):
        s = od.denoise_distributed(src, out, es, scheduler="none", batch=4, chunk_frames=4)  # another batch
    assert s["resumed_from"] == 0
    assert "starting over" in caplog.text and "batch" in caplog.text
    assert_same_output(ref, out)


# ---- the real CLI, killed and rerun ------------------------------------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_cli_killed_mid_run_resumes_to_the_single_process_output(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    n = 240
    inp = write_stack(tmp_path / "in.h5", n, (256, 256), seed=4)
    out, side = tmp_path / "out.h5", tmp_path / "out.h5.partial.json"
    cmd = [
        SBD, "denoise", str(inp), str(out), "--model", str(binning_engine_dir), "--engine", "onnxruntime",
        "--scheduler", "local", "--dask-workers", "2",
    ]  # fmt: skip
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    done, members = 0, []
    try:
        end = time.monotonic() + 150
        while time.monotonic() < end and proc.poll() is None:
            try:
                done = json.loads(side.read_text())["frames_done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done > 0:
                break
            time.sleep(0.01)
        members = group_alive(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its cluster's worker processes
    finally:
        proc.wait(timeout=30)
        assert group_gone(proc.pid), "dask processes outlived the killed client"
    assert 0 < done < n, (
        f"not caught mid-way (frames_done {done}): {(tmp_path / 'first.log').read_text()[-2000:]}"
    )
    assert len(members) >= 3, members  # the client and 2 workers were in the group the kill hit
    assert not out.exists() and (tmp_path / "out.h5.partial").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, start_new_session=True)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["resumed_from"] >= done > 0 and summary["frames"] == n
    assert summary["scheduler"] == "local (2 workers)" and summary["chunks"] == n // 16
    assert not side.exists()
    denoise_file(
        inp,
        tmp_path / "ref.h5",
        settings=DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), orientations=8),
    )  # `sbd-stream denoise` averages over the 8 orientations by default
    assert_same_output(tmp_path / "ref.h5", out)


# ---- replay --offline --------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_replay_offline_denoises_every_recorded_frame(
    scheduler: str, binning_engine_dir: Path, tmp_path: Path
) -> None:
    rec = write_recording(tmp_path / "rec", 40, (64, 48))
    out = tmp_path / "out.h5"
    res = CliRunner().invoke(
        app,
        ["replay", str(rec), "--offline", "--out", str(out), "--model", str(binning_engine_dir),
         "--engine", "onnxruntime", "--scheduler", scheduler],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["frames"] == 40 and summary["chunks"] == 3 and summary["scheduler"] == scheduler
    assert summary["bin"] == 4  # the recording's own sampling (0.060 A) was used
    with h5py.File(out, "r") as f:
        assert f["denoised"].shape == (40, 64, 48)
        # the recording's seq and ts of each row, so readers join on seq as in the recording itself
        np.testing.assert_array_equal(f["seq"][:], np.arange(40))
        np.testing.assert_allclose(f["ts"][:], 100.0 + 0.025 * np.arange(40))
    denoise_file(
        rec,
        tmp_path / "ref.h5",
        "raw/frames",
        settings=DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), orientations=8),
    )  # `sbd-stream denoise` averages over the 8 orientations by default
    assert_same_output(tmp_path / "ref.h5", out)


@pytest.mark.timeout(60)
def test_replay_offline_reads_rolled_parts_and_needs_out(binning_engine_dir: Path, tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "rec", 10, (32, 32), max_file_bytes=1, compression="none")
    parts = sorted((tmp_path / "rec").glob("run_9*.nxs"))
    assert len(parts) > 1  # every frame rolls to a new part
    src = od.inspect_recording(rec)
    assert src.shape == (10, 32, 32) and len(src.parts) == len(parts)
    args = ["replay", str(rec), "--offline", "--model", str(binning_engine_dir), "--engine", "onnxruntime"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--out" in res.output
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o.h5"), "--scheduler", "none"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["denoised"].shape == (10, 32, 32)
        np.testing.assert_array_equal(f["seq"][:], np.arange(10))  # across the rolled parts, in order
        got = f["denoised"][:]
    # the parts read back in frame order: the same numbers as the 10 frames denoised from one plain stack
    rng = np.random.default_rng(5)  # the frames write_recording wrote, drawn again here
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["frames"] = np.stack([rng.poisson(0.45, (32, 32)).astype(np.uint16) for _ in range(10)])
        f.attrs.update(SAMPLING)
    settings = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), orientations=8)
    denoise_file(tmp_path / "stack.h5", tmp_path / "ref.h5", "frames", settings=settings)  # as --offline
    with h5py.File(tmp_path / "ref.h5", "r") as f:
        ref = f["denoised"][:]
    assert len({float(np.abs(a).sum()) for a in ref}) == 10  # ten different frames: order matters
    np.testing.assert_array_equal(got, ref)
