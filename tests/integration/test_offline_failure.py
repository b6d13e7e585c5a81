"""Offline Dask jobs under failure and concurrency: a full disk, two jobs on one output, a lost
scheduler, a resume that must not mix settings or trust a sidecar blindly.

The audit (offline-failure) found a full output disk segfaulting the client after a two-line HDF5
error, with a partial no rerun could use; a second job on the same output silently taking over the
first one's partial (the first exited 0 with the other's frames); a rerun with ``--orientations 1``
resuming an 8-orientation partial; a lost scheduler ending in a 74-line traceback; a sidecar of
``null`` crashing every rerun; and ``frames_done`` trusted beyond the frames in the partial.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import free_port, wait_until
from helpers_offline import SBD, assert_same_output, frames_done, interrupted, write_recording, write_stack
from helpers_procs import group_gone, kill_if_running
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import DenoiseSettings
from sbd_stream.formats.output_lock import OutputBusy, output_lock
from sbd_stream.service import offline_dask as od
from sbd_stream.service.offline import denoise_file

pytestmark = pytest.mark.integration


def _cli(inp: Path, out: Path, engine: Path, *extra: str) -> list[str]:
    return [
        SBD, "denoise", str(inp), str(out), "--model", str(engine), "--engine", "onnxruntime",
        "--batch", "2", "--chunk-frames", "8", *extra,
    ]  # fmt: skip


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _wait_frames(proc: subprocess.Popen, side: Path, timeout: float = 150) -> int:
    """Wait until the job has written a chunk (or ended); its frames_done then."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if (done := frames_done(side)) > 0:
            return done
        time.sleep(0.01)
    return 0


def _reference(inp: Path, ref: Path, engine: Path, **settings) -> Path:
    es = DenoiseSettings(engine="onnxruntime", model=str(engine), batch_frames=2, orientations=8)
    denoise_file(inp, ref, settings=es.model_copy(update=settings))
    return ref


# ---- a full disk ------------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    def preexec() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.timeout(300)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_a_full_disk_ends_in_one_line_and_the_rerun_resumes(binning_engine_dir: Path, tmp_path: Path) -> None:
    """HDF5 fails late (the write or the flush of a chunk, past a file size limit): the job ends in one
    line naming the output, exit 2, no crash at exit, and the partial is one a rerun goes on from."""
    n = 120
    inp = write_stack(tmp_path / "in.h5", n, (256, 256), seed=6)
    out, side = tmp_path / "out.h5", tmp_path / "out.h5.partial.json"
    cmd = _cli(inp, out, binning_engine_dir, "--scheduler", "local", "--dask-workers", "2")
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=200, preexec_fn=_file_size_limit(4_000_000)
    )
    assert r.returncode == 2, r.stderr[-3000:]  # was 139 (SIGSEGV at exit) after a traceback
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
    (line,) = _error_lines(r.stderr)
    assert line.startswith(f"error: {out}: no space left on device"), line
    assert "run the same command to resume" in line
    done = frames_done(side)
    assert 0 < done < n and f"{done} of {n} frames written" in line
    assert not out.exists() and Path(f"{out}.partial").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200)  # space freed
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{") :])["resumed_from"] == done
    assert_same_output(_reference(inp, tmp_path / "ref.h5", binning_engine_dir), out)
    assert not side.exists() and not Path(f"{out}.partial").exists()


# ---- two jobs on one output ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_second_job_on_the_same_output_is_refused_before_touching_its_partial(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    """The second job's "w" truncated the first one's partial (or started it over under Dask)."""
    inp = write_stack(tmp_path / "in.h5", 40, (64, 48))
    out = tmp_path / "out.h5"
    partial, side = Path(f"{out}.partial"), Path(f"{out}.partial.json")
    partial.write_bytes(b"the other job's frames")
    side.write_text('{"the other job": 1}')
    args = ["denoise", str(inp), str(out), "--model", str(binning_engine_dir), "--engine", "onnxruntime"]
    with output_lock(out):  # another job (this lock: a file description of its own, as in another process)
        for scheduler in ("local", "none"):
            res = CliRunner().invoke(app, [*args, "--scheduler", scheduler, "--chunk-frames", "8"])
            assert res.exit_code == 2, res.output
            assert f"{out}: another job is writing it (pid {os.getpid()})" in res.output
        with pytest.raises(OutputBusy):
            od.denoise_distributed(od.inspect_stack(inp), out, DenoiseSettings(), scheduler="none")
    assert partial.read_bytes() == b"the other job's frames" and side.read_text() == '{"the other job": 1}'
    assert not out.exists()
    rec, rout = write_recording(tmp_path / "rec", 20, (64, 48)), tmp_path / "replayed.h5"
    with output_lock(rout):
        res = CliRunner().invoke(app, ["replay", str(rec), "--offline", "--out", str(rout), *args[3:]])
    assert res.exit_code == 2, res.output
    assert f"{rout}: another job is writing it" in res.output and "Traceback" not in res.output


@pytest.mark.timeout(300)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_an_output_that_appears_during_the_job_is_not_replaced_without_overwrite(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    """Checked at the start only, a finished job's rename replaced a file made meanwhile; now the job
    ends in one line keeping its frames, and ``--overwrite`` only renames them."""
    n = 160
    inp = write_stack(tmp_path / "in.h5", n, (256, 256), seed=8)
    out, side = tmp_path / "out.h5", tmp_path / "out.h5.partial.json"
    cmd = _cli(inp, out, binning_engine_dir, "--scheduler", "local", "--dask-workers", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_frames(proc, side) > 0, "the job ended before a chunk was seen"
        out.write_text("someone else's file")
        _, err = proc.communicate(timeout=200)
    finally:
        kill_if_running(proc, timeout=10)
    assert proc.returncode == 2, err[-3000:]
    (line,) = _error_lines(err)
    assert f"{out} appeared while this job ran" in line and "--overwrite" in line
    assert out.read_text() == "someone else's file" and frames_done(side) == n

    r = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{") :])["resumed_from"] == n  # only renamed
    assert_same_output(_reference(inp, tmp_path / "ref.h5", binning_engine_dir), out)


# ---- what a resume trusts -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("changed", [{"orientations": 1}, {"tile": 32}])
def test_a_resume_with_another_pixel_setting_starts_over_naming_it(
    binning_engine_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    changed: dict,
) -> None:
    """``--orientations`` (and tiling, the version) were outside the fingerprint: a rerun resumed, and
    the file mixed 8- and 1-orientation frames under an ``orientations`` attribute of 8."""
    inp = write_stack(
        tmp_path / "in.h5", 20, (256, 256), seed=3
    )  # 64 x 64 working pixels: tiles of 32 differ
    out = tmp_path / "out.h5"
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), orientations=8, tile=64)
    src = od.inspect_stack(inp)
    interrupted(monkeypatch, src, out, es)
    other = es.model_copy(update=changed)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service"):
        s = od.denoise_distributed(src, out, other, scheduler="none", batch=2, chunk_frames=4)
    assert s["resumed_from"] == 0
    assert "starting over" in caplog.text
    field = "orientations" if "orientations" in changed else "tiling"
    assert f"({field})" in caplog.text, caplog.text  # the one field that differs, named
    denoise_file(inp, tmp_path / "ref.h5", settings=other)
    assert_same_output(tmp_path / "ref.h5", out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("sidecar", "why"),
    [
        ("null", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"fingerprint": "x", "frames_done": 12}', "no fingerprint object"),
        ('{"fingerprint": {"inp', ""),
        ("", ""),
    ],
    ids=["null", "list", "fingerprint-str", "bad-json", "empty"],
)
def test_an_unreadable_sidecar_is_reported_as_such_and_the_job_starts_over(
    binning_engine_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sidecar: str,
    why: str,
) -> None:
    inp = write_stack(tmp_path / "in.h5", 20, (64, 48), seed=4)
    out = tmp_path / "out.h5"
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    src = od.inspect_stack(inp)
    interrupted(monkeypatch, src, out, es)
    Path(f"{out}.partial.json").write_text(sidecar)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service"):
        s = od.denoise_distributed(src, out, es, scheduler="none", batch=2, chunk_frames=4)
    assert s["resumed_from"] == 0
    assert f"{out}.partial.json could not be read ({why}" in caplog.text, caplog.text
    assert "other inputs or settings" not in caplog.text
    denoise_file(inp, tmp_path / "ref.h5", settings=es.model_copy(update={"batch_frames": 2}))
    assert_same_output(tmp_path / "ref.h5", out)


@pytest.mark.timeout(60)
def test_a_resume_steps_back_to_the_first_frame_missing_from_the_partial(
    binning_engine_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sidecar ahead of the partial (its rename reached the disk, the frames did not) was trusted:
    the output then held frames of fill value zeros."""
    inp = write_stack(tmp_path / "in.h5", 20, (64, 48), seed=5)
    out = tmp_path / "out.h5"
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    src = od.inspect_stack(inp)
    interrupted(monkeypatch, src, out, es)
    side = Path(f"{out}.partial.json")
    state = json.loads(side.read_text())
    side.write_text(json.dumps({**state, "frames_done": 18}))  # neither the partial's 12 nor a chunk start
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service"):
        s = od.denoise_distributed(src, out, es, scheduler="none", batch=2, chunk_frames=4)
    assert s["resumed_from"] == 12
    assert "holds frames up to 12 only, not 18" in caplog.text
    denoise_file(inp, tmp_path / "ref.h5", settings=es.model_copy(update={"batch_frames": 2}))
    assert_same_output(tmp_path / "ref.h5", out)
    with h5py.File(out, "r") as f:
        assert np.all(np.abs(f["denoised"][:]).reshape(20, -1).max(1) > 0)  # no frame left at the fill value


# ---- the cluster ---------------------------------------------------------------------------------------
CONNECT_S = 600  # the client's connect timeout in the test below: far above any run of that test


def _address_in(scheduler_file: Path) -> str:
    """The address a ``dask scheduler --scheduler-file`` wrote, or "" while it has written none (or only
    part of its JSON)."""
    try:
        return str(json.loads(scheduler_file.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return ""


@pytest.mark.timeout(CONNECT_S // 2 + 60)
def test_a_closed_scheduler_port_is_refused_at_once(binning_engine_dir: Path, tmp_path: Path) -> None:
    """The client retried a refused connection for its whole connect timeout (30 s by default), then
    failed with "Timed out trying to connect". With that timeout at 600 s a client that waits for it
    cannot finish within half of it however fast the machine is, and one that refuses at once does on
    any machine that runs the suite: the bound says which path ran without measuring this machine's
    speed, and so does the reason in the output."""
    import dask
    import distributed  # noqa: F401 -- registers the distributed.* settings the override below replaces

    inp = write_stack(tmp_path / "in.h5", 40, (64, 48))
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there now
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_S}s"}):
        res = CliRunner().invoke(
            app,
            ["denoise", str(inp), str(tmp_path / "out.h5"), "--model", str(binning_engine_dir),
             "--engine", "onnxruntime", "--scheduler", address, "--chunk-frames", "8"],
        )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"error: {address}: connection refused" in res.output
    assert "Timed out" not in res.output
    assert time.monotonic() - t0 < CONNECT_S / 2  # not the connect timeout


@pytest.mark.timeout(200)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_a_worker_error_is_the_one_error_line(binning_engine_dir: Path, tmp_path: Path) -> None:
    """Each local worker printed distributed's "Compute Failed / Key / State / Task / Exception /
    Traceback" block before the command's own error line."""
    n = 64
    inp = tmp_path / "in.h5"
    with h5py.File(inp, "w") as f:
        rng = np.random.default_rng(1)
        ds = f.create_dataset("frames", data=rng.poisson(0.45, (n, 64, 48)).astype(np.uint16),
                              chunks=(1, 64, 48), compression="gzip")  # fmt: skip
        f.attrs.update({"pixel_size_A": 0.06, "counts_per_px": 0.45})
        info = ds.id.get_chunk_info_by_coord((40, 0, 0))
    with open(inp, "r+b") as fh:  # frame 40's compressed bytes: garbage, so its read fails on a worker
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    cmd = _cli(inp, tmp_path / "out.h5", binning_engine_dir, "--scheduler", "local", "--dask-workers", "2")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = _error_lines(r.stderr)
    assert "frame 40" in line, line
    for noise in ("Compute Failed", "Traceback", "State:"):
        assert noise not in r.stderr, r.stderr[-3000:]


@pytest.mark.timeout(300)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_a_lost_scheduler_ends_in_one_line_and_keeps_the_partial(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    """The scheduler SIGKILLed mid-job: a 74-line FutureCancelledError traceback and exit 1 before."""
    from distributed import Client

    n = 240
    inp = write_stack(tmp_path / "in.h5", n, (256, 256), seed=9)
    out, side = tmp_path / "out.h5", tmp_path / "out.h5.partial.json"
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}  # the client's reconnect wait
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = tmp_path / "scheduler.json"  # the scheduler binds a port of its own and writes it here
    procs = [
        subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(sched_file)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]  # fmt: skip
    job = None
    try:
        assert wait_until(lambda: _address_in(sched_file) or procs[0].poll() is not None, 90)
        address = _address_in(sched_file)
        assert address, f"the scheduler ended ({procs[0].poll()}) before it wrote {sched_file}"
        workers = [dask, "worker", address, "--nthreads", "1", "--nworkers", "2", "--no-dashboard"]
        procs.append(
            subprocess.Popen(
                workers, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        )
        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=90)
        job = subprocess.Popen(
            _cli(inp, out, binning_engine_dir, "--scheduler", address),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert _wait_frames(job, side) > 0, "the job ended before a chunk was seen"
        os.killpg(procs[0].pid, signal.SIGKILL)  # the scheduler
        _, err = job.communicate(timeout=120)
    finally:
        for p in procs:  # the scheduler's and the workers' groups, then the job
            kill_if_running(p, group=True, timeout=20)
        if job is not None:
            kill_if_running(job, timeout=20)
        for p in procs:
            assert group_gone(p.pid)
    assert job.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "distributed.client" not in err, err[-3000:]
    (line,) = _error_lines(err)
    done = frames_done(side)
    assert line == (
        f"error: lost the Dask scheduler {address}: interrupted after frame {done} of {n}; "
        "run the same command to resume"
    )
    assert 0 < done < n and not out.exists() and Path(f"{out}.partial").exists()
