"""`sbd-train` that fails while stderr cannot be written ends with its documented status (2, 130, 143).

Found: ``sbd-train --bogus 2>/dev/full`` exited 1, not the 2 a usage error is documented to end with
(docs/training.md, "Errors"): click's report of the error raised ENOSPC, and the interpreter's status for
an uncaught error replaced it (``sbd-stream`` was fixed the same way in 317cbec). A Ctrl-C or SIGTERM
whose ``interrupted:`` line could not be written ended in 1 as well, instead of 130 / 143, also with
stderr closed (``2>&-``: no ``sys.stderr`` at all). A script that tells "bad input" (2) or "stopped" (130,
143) from "crashed" (1) by ``$?`` got it wrong. Every case runs the real console entry
(``python -m training.console``, what the ``sbd-train`` script calls) in a child process with its stderr
on the real ``/dev/full`` (or closed), bounded by a timeout so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hup_default, wait_until

pytestmark = [
    pytest.mark.integration,  # real processes and devices
    pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)"),
]

CLI = [sys.executable, "-m", "training.console"]
# both ways fail() prints: rich red on a colour terminal (secho), plain under NO_COLOR (echo)
COLOURS = {"colour": {"TERM": "xterm-256color"}, "no-colour": {"NO_COLOR": "1", "TERM": "dumb"}}


def _env(colour: str = "colour") -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")} | COLOURS[colour]


def _child_setup(closed: bool) -> None:
    """In the child: SIGINT / SIGTERM / SIGHUP at their defaults (a suite run under ``nohup`` or in the
    background hands an ignore down), and stderr closed for ``2>&-``."""
    hup_default()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    if closed:
        os.close(2)


def _run(args: list[str], closed: bool = False, colour: str = "colour") -> tuple[int, str]:
    """(exit status, stdout) of ``sbd-train ARGS`` with stderr on ``/dev/full`` (or closed: ``2>&-``)."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=None if closed else full,
            preexec_fn=lambda: _child_setup(closed),
            env=_env(colour),
            timeout=150,  # a hang fails the test, never the suite
        )
    return proc.returncode, proc.stdout.decode("utf-8", "backslashreplace")


STDERR = {"full": False, "closed": True}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stderr", sorted(STDERR))
def test_an_unknown_option_ends_with_status_2_when_stderr_cannot_take_it(stderr: str) -> None:
    """click's own report of ``--bogus`` cannot be written; its status is 2, as printed (was 1 on
    /dev/full)."""
    rc, stdout = _run(["--bogus"], closed=STDERR[stderr])
    assert rc == 2 and stdout == ""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "args",
    [["evaluate-images", "/nonexistent"], ["simulate", "--preset", "no-such-preset", "--plan"]],
    ids=["missing-option", "bad-parameter-from-the-command"],
)
def test_a_usage_error_click_cannot_print_ends_with_status_2(args: list[str]) -> None:
    """A missing required option (click's parser), and ``typer.BadParameter`` raised inside a command
    (past ``friendly_errors``): the same, 2 (was 1)."""
    rc, stdout = _run(args)
    assert rc == 2 and stdout == ""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("args", "closed", "colour"),
    [
        (["evaluate-images", "/nonexistent-folder", "--pixel-size", "0.05"], False, "colour"),
        (["evaluate-images", "/nonexistent-folder", "--pixel-size", "0.05"], True, "colour"),
        (["contact-sheet", "--data", "/nonexistent.h5", "--out", "OUT"], False, "no-colour"),
        (["gpu-recipe", "--steps", "bogus", "--dry-run"], False, "no-colour"),
    ],
    ids=["missing-folder-full", "missing-folder-closed", "missing-data-full", "recipe-error-full"],
)
def test_a_refused_input_ends_with_status_2_when_stderr_cannot_take_it(
    tmp_path: Path, args: list[str], closed: bool, colour: str
) -> None:
    """The commands' own ``error:`` lines (``fail``; gpu-recipe's RecipeError): status 2, nothing
    written."""
    args = [str(tmp_path / "out.png") if a == "OUT" else a for a in args]
    rc, stdout = _run(args, closed=closed, colour=colour)
    assert rc == 2 and stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.sim.synthetic_data import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("d") / "syn.h5", n_structures=6, per_structure=3, size=32)


def _trained_steps(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.is_file():
        return 0
    return sum('"loss"' in ln for ln in log.read_text().splitlines() if ln.strip().endswith("}"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stderr", sorted(STDERR))
def test_a_stopped_training_run_ends_with_status_143_when_stderr_cannot_take_its_line(
    data: Path, tmp_path: Path, stderr: str
) -> None:
    """SIGTERM mid-run: ``interrupted: ...`` cannot be written; the status still says "stopped by
    SIGTERM", 143 (was 1), and the steps are saved as documented (``last.pt``)."""
    runs = tmp_path / "runs"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(runs), "--name", "r",
            "--threads", "1", "--device", "cpu", "--val-every", "100000",
            "--max-steps", "1000000"]  # fmt: skip
    closed = STDERR[stderr]
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.DEVNULL,
            stderr=None if closed else full,
            preexec_fn=lambda: _child_setup(closed),
            env=_env(),
        )
    try:
        assert wait_until(lambda: _trained_steps(runs / "r") >= 3 or proc.poll() is not None, 300)
        assert proc.poll() is None, proc.returncode  # training, not ended
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 143
    assert (runs / "r" / "last.pt").is_file()


@pytest.mark.timeout(600)
def test_a_run_that_warns_succeeds_when_stderr_cannot_take_its_warnings(tmp_path: Path) -> None:
    """``evaluate-images`` on a clean image with a negative pixel: its ``warning:`` lines are lost, the
    run ends in 0 with its results (the warning's OSError was taken for a bad input: no results, 2)."""
    import numpy as np

    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    clean = np.ones((128, 128), np.float32)  # vacuum around a square specimen
    clean[40:80, 40:80] = 0.6
    clean[60, 60] = -0.1  # "may be contrast or a phase": warned about, scored clipped at 0
    np.save(folder / "a.npy", clean)
    args = ["evaluate-images", str(folder), "--pixel-size", "0.06", "--draws", "1", "--orientations", "1",
            "--engine", "sbd-unet3s2-paper-twins", "--out-dir", str(out)]  # fmt: skip
    rc, _ = _run(args, colour="no-colour")
    assert rc == 0
    assert any(p.suffix == ".json" for p in out.iterdir())


@pytest.mark.timeout(300)
def test_commands_that_succeed_are_unaffected(tmp_path: Path) -> None:
    """A successful command with stderr on /dev/full ends in 0 with its output; ``--help | head -1``
    (a reader that leaves early) ends in 0 under ``set -o pipefail``."""
    rc, stdout = _run(["simulate", "--preset", "mini", "--plan"])
    assert rc == 0 and "mini" in stdout
    script = f"set -o pipefail; {' '.join(CLI)} --help 2>/dev/full | head -1"
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=_env(), preexec_fn=hup_default,
        timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1, proc.stderr
