"""A training run as a process: one per run folder, and stopped by Ctrl-C or SIGTERM it saves its steps,
says so in one line and resumes with the same command (a larger cosine budget going on from its rate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import wait_until
from helpers_procs import interactive_signals_default

from training.sim.synthetic_data import write_synthetic
from training.train.lock import LOCK_FILE, RunBusy, RunLock

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "training.cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("d") / "syn.h5", n_structures=6, per_structure=3, size=32)


def _args(data: Path, runs: Path, max_steps: int, *extra: str) -> list[str]:
    # no validation (val_every far away): no early stop, so the run goes on until it is stopped
    return ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(runs), "--name", "r",
            "--threads", "1", "--device", "cpu", "--val-every", "100000", "--max-steps", str(max_steps),
            *extra]  # fmt: skip


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=log.open("w"),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interactive_signals_default,
    )


def _steps(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip().endswith("}")]


def _running(run: Path, proc: subprocess.Popen) -> bool:
    """The run is training (logged 5 steps) and its lock names the process."""
    lock = run / LOCK_FILE
    steps = [r for r in _steps(run) if "loss" in r]
    return len(steps) >= 5 and lock.is_file() and lock.read_text().strip() == str(proc.pid)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, list[str]]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.strip().splitlines()


def test_a_second_run_under_the_same_name_is_refused_and_ctrl_c_saves_the_steps(
    data: Path, tmp_path: Path
) -> None:
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    first = _start(_args(data, runs, 1_000_000), tmp_path / "first.log")
    try:
        assert wait_until(lambda: _running(run, first), 120), (first.poll(), _steps(run)[:3])
        config = (run / "config.json").read_text()
        n_log = len(_steps(run))
        # the same name with another rate: refused before it reads or writes anything
        second = subprocess.run([*CLI, *_args(data, runs, 50, "--lr", "0.01")], capture_output=True,
                                text=True, timeout=120, preexec_fn=interactive_signals_default)  # fmt: skip
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert lines[0] == (
            f"error: {run} is in use by another training run (pid {first.pid}): wait for it to end, "
            "or train under another --name"
        )
        assert (run / "config.json").read_text() == config  # the first run's options, its log kept
        assert len(_steps(run)) >= n_log and _steps(run)[0]["event"] == "start"
        rc, err = _stop(first, signal.SIGINT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    step = torch.load(run / "last.pt", weights_only=True)["state"]["step"]
    assert rc == 130 and step >= 5
    assert err[-1] == (
        f"interrupted: training {run} stopped by SIGINT at step {step}; {run / 'last.pt'} holds step "
        f"{step}: rerun the same command to resume"
    ), err
    assert {"event": "interrupted", "signal": "SIGINT", "step": step} in _steps(run)
    assert not (run / "last.pt.tmp").exists()
    # the lock went with the process: the same command (a budget just past the step) goes on from there
    res = subprocess.run([*CLI, *_args(data, runs, step + 2)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert {"event": "resumed", "step": step} in _steps(run)
    assert json.loads((run / "summary.json").read_text())["steps"] == step + 2


def test_sigterm_saves_the_steps_and_a_larger_cosine_budget_goes_on_from_the_current_rate(
    data: Path, tmp_path: Path
) -> None:
    """A GPU lease ends in SIGTERM: the steps since the last validation are kept, and the run given a
    budget that ends soon after decays from the rate it had (it used to restart the new budget's cosine
    at the current step: a jump)."""
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    cosine = ("--lr-schedule", "cosine")
    first = _start(_args(data, runs, 1_000_000, *cosine), tmp_path / "first.log")
    try:
        assert wait_until(lambda: _running(run, first), 120), (first.poll(), _steps(run)[:3])
        rc, err = _stop(first, signal.SIGTERM)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    state = torch.load(run / "last.pt", weights_only=True)["state"]
    step = state["step"]
    assert rc == 143 and err[-1].startswith(f"interrupted: training {run} stopped by SIGTERM at step {step};")
    before = [r["lr"] for r in _steps(run) if "loss" in r]
    res = subprocess.run([*CLI, *_args(data, runs, step + 10, *cosine)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    after = [r["lr"] for r in _steps(run) if "loss" in r and r["step"] > step]
    assert len(after) == 10
    # the first step after the resume runs at the rate the run had (1e-3 x ~1 a million steps from the
    # end), then the rate falls to min_lr over the 10 steps left
    assert after[0] == pytest.approx(before[-1], rel=1e-4), (before[-3:], after)
    assert after == sorted(after, reverse=True) and after[-1] < 0.05 * after[0]
    retimed = [r for r in _steps(run) if r.get("event") == "lr_retimed"]
    assert len(retimed) == 1 and retimed[0]["step"] == step


def test_the_lock_names_its_holder_and_goes_with_it_when_it_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from training.train.lock import RunLock
            RunLock(Path({str(tmp_path)!r}))
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, preexec_fn=interactive_signals_default,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=rf"in use by another training run \(pid {holder.pid}\)"):
            RunLock(tmp_path)
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait(10)
        RunLock(tmp_path).release()
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_best_pt_is_replaced_whole_not_rewritten_in_place(data: Path, tmp_path: Path) -> None:
    """``best.pt`` goes to ``best.pt.tmp`` and is renamed, as ``last.pt``: a kill or a full disk during
    the write leaves the previous best whole. Seen through a hard link to the previous file: written in
    place (as it was), the link would show the new bytes."""
    from training.train.loop import train
    from training.train.presets import preset_config

    cfg = preset_config("tiny", data=str(data), out_dir=str(tmp_path / "runs"), threads=1, max_steps=3)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "best.pt").write_bytes(b"the previous best")
    os.link(cfg.run_dir / "best.pt", tmp_path / "previous")
    train(cfg)  # no last.pt: a fresh run, whose first validation (step 3) is its best
    assert (tmp_path / "previous").read_bytes() == b"the previous best"
    best = torch.load(cfg.run_dir / "best.pt", weights_only=True)
    assert set(best) == set(torch.load(cfg.run_dir / "last.pt", weights_only=True)["model"])
    assert not (cfg.run_dir / "best.pt.tmp").exists()
