"""`serve` stopped with more work queued than its stop budget (``stop_timeout_s``) allows, as processes.

A recorder still writing when the budget ran out was left inside h5py on a daemon thread: `serve`
printed its summary and then hung for good at the interpreter's exit (h5py's lock held by the frozen
thread), its recording left open-for-write and the raw frames still queued neither recorded nor
counted. Workers still denoising ended the process by SIGABRT (status 134) and the frames still queued
for them were never denoised nor counted. Now each part gets its share of the budget (``StopBudget``),
what it cannot do in time is counted and logged once, the files are closed, and `serve` exits 0.

A tiny budget (0.3 s) and many large frames make the stop run out of time on any machine; every count
is read from the summary and the recording, nothing is timed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import zmq
from conftest import free_port, hup_default, service_metric, wait_until

from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "sbd_stream"]


def _superblock_flags(path: Path) -> int:
    """HDF5 superblock v2/v3 status flags (byte 11): 0 once closed; 1 / 4 / 5 while open for write."""
    head = path.read_bytes()[:16]
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] >= 2, head
    return head[11]


def _rows(folder: Path, kind: str) -> int:
    total = 0
    for part in sorted(folder.glob("*.nxs")):
        with h5py.File(part, "r") as f:
            total += len(f[f"{kind}/complete"]) if kind in f else 0
    return total


def _serve_and_stop(tmp_path: Path, engine: Path, n: int, *flags: str) -> tuple[int, dict, str, Path]:
    """`serve` (tiny stop budget) fed ``n`` frames of 1024 x 1024, then one SIGTERM once all are received;
    (exit status, summary, stderr, recording folder)."""
    ctx = zmq.Context.instance()
    emu = Emulator(
        EmulatorSettings(
            endpoint="tcp://127.0.0.1:*", shape=(1024, 1024), n_frames=n, rate_hz=100, wait_subscriber_s=120
        ),
        ctx,
    )
    rec, metrics_port = tmp_path / "rec", free_port(ctx)
    cmd = [
        *CLI, "serve", "--input", emu.endpoint, "--output", f"tcp://127.0.0.1:{free_port(ctx)}",
        "--record-dir", str(rec), "--model", str(engine), "--engine", "onnxruntime",
        "--metrics-port", str(metrics_port), "--batch", "4", *flags,
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_STOP_TIMEOUT_S": "0.3"}
    env["SBD_LANES__COMPLETE_TIMEOUT_S"] = "0.3"  # the complete lane (default lanes) out of time too
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=hup_default
    )
    try:
        assert emu.run() == n
        received = lambda: service_metric(metrics_port, "sbd_frames_received_total") == n  # noqa: E731
        assert wait_until(received, 60), proc.stderr.read() if proc.poll() is not None else "not received"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # it hung for good (or aborted) here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        emu.close()
    summary = json.loads(out[out.index("{") :]) if "{" in out else {}
    return proc.returncode, summary, err, rec


@pytest.mark.timeout(180)
def test_a_recorder_out_of_time_closes_its_files_counts_what_it_left_and_serve_exits_0(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """gzip makes the recorder the slow part: what it could not write is in ``record_dropped`` (one line
    with its number), the file is closed (status flags 0, h5py opens it), and every item handed to the
    recorder is either in the file or counted."""
    rc, s, err, rec = _serve_and_stop(
        tmp_path, tiny_engine_dir, 48, "--no-live", "--no-likelihood", "--compression", "gzip"
    )
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
    parts = sorted(rec.glob("*.nxs"))
    assert parts and all(_superblock_flags(p) == 0 for p in parts), err[-3000:]
    raw, denoised = _rows(rec, "raw"), _rows(rec, "denoised")
    assert raw == s["recorded_raw"] and denoised == s["recorded_denoised"], (raw, denoised, s)
    # handed to the recorder: every received raw frame, every denoised one: written or counted
    assert raw + denoised + s["record_dropped"] == s["frames_received"] + s["frames_denoised"], s
    if raw < s["frames_received"]:  # the recorder ran out of time (what this test is about): said once
        assert "queued frames NOT recorded (counted in sbd_record_dropped_total)" in err, err[-3000:]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("lanes", [["--no-live"], []], ids=["no-live", "default-lanes"])
def test_workers_out_of_time_leave_the_queued_frames_for_offline_and_serve_exits_0(
    tmp_path: Path, tiny_engine_dir: Path, lanes: list[str]
) -> None:
    """More queued than the budget denoises: the frames still queued (and in the complete lane's backlog)
    are left for offline (counted, said once with their number), every raw frame is recorded, exit 0.
    `--no-live` ended by SIGABRT (134) with the queued frames neither denoised nor counted."""
    rc, s, err, rec = _serve_and_stop(
        tmp_path, tiny_engine_dir, 48, *lanes, "--no-likelihood", "--compression", "none"
    )
    assert rc == 0, err[-3000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-3000:]
    left = s["frames_left_for_offline"]
    accounted = s["frames_denoised"] + left + s["frames_failed"] + s["denoise_overflow"]
    assert accounted == s["frames_received"] == 48, s
    if left:
        assert "are left for offline" in err, err[-3000:]
    assert all(_superblock_flags(p) == 0 for p in rec.glob("*.nxs")), err[-3000:]
    assert _rows(rec, "raw") + s["record_dropped"] >= s["frames_received"], s
