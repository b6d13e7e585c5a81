"""A Ctrl-C while `serve` / `demo` / `replay` / `merge` start (session 36), as processes.

Their stop handler (``cli.app.on_signals``: a stop sets an event the service polls) is installed once
the engine has loaded; before it, Ctrl-C is Python's own raise. One that landed in a weakref callback of
the load (Python prints "Exception ignored in ..." and drops it; ``helpers_signals``) was lost, and the
service ran on until the next Ctrl-C. Now the CLI records it (``stop_pending.ctrl_c_recorded``) and
``on_signals`` takes it over when it installs: the command starts, stops at once by its usual path
(drain, summary, exit 0 as for a Ctrl-C later on). One that was not swallowed ends the load with one
line, ``interrupted``, exit 130 (before: exit 130 and nothing said), never a traceback.

The child patches the engine load (``service.build.load_stages``; for ``merge``, which loads none,
``prepare_process`` before its handler) to deliver the signal there, then runs the real console entry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zmq
from conftest import free_port
from helpers_offline import write_recording

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import signal, sys
    sys.path.insert(0, {tests!r})
    from helpers_signals import signal_inside_a_weakref_callback
    import sbd_stream.cli.service_start as start
    import sbd_stream.service.build as build

    def deliver():
        if {swallowed!r}:
            signal_inside_a_weakref_callback(signal.SIGINT)  # Python drops the KeyboardInterrupt
        else:
            signal.raise_signal(signal.SIGINT)

    def patched(original):
        def during_the_load(*args, **kwargs):
            deliver()
            return original(*args, **kwargs)
        return during_the_load

    if {args!r}[0] == "merge":  # it loads no engine: its start, before its handler
        start.prepare_process = patched(start.prepare_process)
    else:
        build.load_stages = patched(build.load_stages)
    from sbd_stream.cli import main
    sys.argv = ["sbd-stream", *{args!r}]
    main()
    """
)


def _defaults() -> None:
    """The child as in a terminal: a suite run as ``cmd &`` passes SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _args(command: str, tmp_path: Path, engine_dir: Path) -> list[str]:
    ctx = zmq.Context.instance()
    engine = ["--model", str(engine_dir), "--engine", "onnxruntime"]
    if command == "serve":
        return ["serve", "--no-record", "--input", f"tcp://127.0.0.1:{free_port(ctx)}",
                "--output", "tcp://127.0.0.1:*", "--metrics-port", "0", *engine]  # fmt: skip
    if command == "demo":
        return ["demo", "--frames", "200", "--rate", "20", "--shape", "64x64", "--synthetic", "--no-record",
                "--pixel-size", "0.3", *engine]  # fmt: skip
    if command == "replay":
        rec = write_recording(tmp_path / "src", 6, (64, 48))
        return ["replay", str(rec), "--realtime", "--record-dir", str(tmp_path / "out"), *engine]
    return ["merge", "--input", f"tcp://127.0.0.1:{free_port(ctx)}",
            "--output", f"tcp://127.0.0.1:{free_port(ctx)}"]  # fmt: skip


def _run(command: str, tmp_path: Path, engine_dir: Path, swallowed: bool) -> subprocess.CompletedProcess:
    code = CHILD.format(tests=str(TESTS), swallowed=swallowed, args=_args(command, tmp_path, engine_dir))
    env_extra = {"SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_METRICS__PORT": "0"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=150,  # before the fix, a swallowed one: the service ran on, until this killed it
        env={**os.environ, **env_extra},
        cwd=tmp_path,
        preexec_fn=_defaults,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", ["serve", "demo", "replay", "merge"])
def test_a_ctrl_c_swallowed_while_starting_stops_the_command_by_its_usual_path(
    command: str, tmp_path: Path, tiny_engine_dir: Path
) -> None:
    try:
        proc = _run(command, tmp_path, tiny_engine_dir, swallowed=True)
    except subprocess.TimeoutExpired as e:  # the old code: running on after the lost Ctrl-C
        pytest.fail(f"{command} ran on after a Ctrl-C swallowed while it started: {e.stderr!r}"[-3000:])
    err = proc.stderr
    assert "Exception ignored" in err  # the raise really was swallowed, in the load
    assert proc.returncode == 0, err[-3000:]  # a Ctrl-C's clean stop, as after the start
    assert "SIGINT: stopping" in err, err[-3000:]
    assert err.count("Traceback") == 1, err[-3000:]  # Python's own for the swallowed raise, no other
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # the summary, after the drain
    if command == "replay":
        assert summary["frames_fed"] < 6  # the feed stopped: not the whole recording
        assert list((tmp_path / "out").glob("*.nxs")) or summary["frames_fed"] == 0
    if command == "demo":
        assert summary["lanes"]["live"] is not None


@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", ["serve", "demo", "replay", "merge"])
def test_a_ctrl_c_while_starting_is_one_line_and_130(
    command: str, tmp_path: Path, tiny_engine_dir: Path
) -> None:
    proc = _run(command, tmp_path, tiny_engine_dir, swallowed=False)
    err = proc.stderr
    assert proc.returncode == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted", err[-3000:]  # before: 130, nothing said
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert proc.stdout.strip() == ""  # no summary: nothing ran
