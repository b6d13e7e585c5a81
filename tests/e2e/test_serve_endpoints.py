"""`serve` / `replay --publish` with an endpoint or port they cannot open: one line, exit status 2.

Why: `--input foo`, `--output foo`, a TOML `[publish] endpoint = "127.0.0.1:5556"` (no scheme), an output,
metrics or viewer port another program holds each ended in a ~100-line ZMQError / OSError traceback
(exit 1), the malformed ones after the engine had loaded and after the publisher had warned that
"foo" was "reachable from other machines"; `:99999` was bound as another port (modulo 65536). The
error names the flag when a flag gave the value, else the setting. Real sockets on 127.0.0.1, real
processes for the ports in use.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from typer.testing import CliRunner

from sbd_stream.cli.app import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.receiver import endpoint_problem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]  # a regression must not hang the suite

runner = CliRunner()
SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script


def _free_port() -> int:
    """conftest.free_port: drawn outside the kernel's ephemeral range and checked on every address."""
    return free_port()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port another program holds (listening) for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture
def signals_kept() -> Iterator[None]:
    """``serve`` in this process installs SIGINT / SIGTERM handlers: put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _ports(**given: str) -> list[str]:
    """--input / --output / --metrics-port on free ports unless ``given`` (flag name without dashes)."""
    flags = {
        "input": f"tcp://127.0.0.1:{_free_port()}",
        "output": f"tcp://127.0.0.1:{_free_port()}",
        "metrics-port": str(_free_port()),
        **given,
    }
    return [a for k, v in flags.items() for a in (f"--{k}", v)]


def _one_line_error(output: str, code: int, *words: str) -> str:
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, (code, output)
    assert "Traceback" not in output and all(w in errors[0] for w in words), errors
    return errors[0]


def test_endpoint_rules() -> None:
    """Only what is certainly wrong is refused; names and interfaces are libzmq's to resolve."""
    for ok, binds in [
        ("tcp://127.0.0.1:5556", False), ("tcp://127.0.0.1:*", True), ("tcp://*:5556", True),
        ("tcp://eth0:5556", True), ("tcp://[::1]:5556", False), ("tcp://detector.lan:9999", False),
        ("ipc:///tmp/sbd.sock", True), ("inproc://frames", True), ("tcp://10.0.0.2;10.0.0.1:5555", False),
    ]:  # fmt: skip
        assert endpoint_problem(ok, binds) is None, ok
    for bad, binds, why in [
        ("foo", True, "not a ZeroMQ endpoint"), ("", False, "not a ZeroMQ endpoint"),
        ("127.0.0.1:5556", True, "not a ZeroMQ endpoint"), ("http://x:1", False, "unknown transport"),
        ("tcp://127.0.0.1", True, "needs host:port"), ("tcp://127.0.0.1:99999", True, "not 1 to 65535"),
        ("tcp://127.0.0.1:*", False, "not 1 to 65535"), ("tcp://127.0.0.1:0", False, "not 1 to 65535"),
        ("tcp://256.1.1.1:5555", False, "256.1.1.1 is not an IP address"), ("tcp://[zz]:1", True, "zz"),
    ]:  # fmt: skip
        problem = endpoint_problem(bad, binds)
        assert problem is not None and why in problem, (bad, problem)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"input": "foo"}, ["--input foo: not a ZeroMQ endpoint"]),
        ({"output": "foo"}, ["--output foo: not a ZeroMQ endpoint"]),
        ({"output": "127.0.0.1:5556"}, ["--output 127.0.0.1:5556: not a ZeroMQ endpoint"]),
        ({"output": ""}, ['--output "": not a ZeroMQ endpoint']),
        ({"input": "tcp://256.1.1.1:5555"}, ["--input tcp://256.1.1.1:5555: 256.1.1.1 is not an IP"]),
    ],
)
def test_a_malformed_flag_endpoint_is_one_line_without_the_exposure_warning(
    given: dict[str, str], words: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        res = runner.invoke(app, ["serve", "--no-record", *_ports(**given)])
    _one_line_error(res.output, res.exit_code, *words)
    assert "reachable from other machines" not in caplog.text + res.output


def test_a_malformed_endpoint_from_the_settings_names_the_setting(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[publish]\nendpoint = "127.0.0.1:5556"\n')
    port = ["--input", f"tcp://127.0.0.1:{_free_port()}", "--metrics-port", str(_free_port())]
    res = runner.invoke(app, ["serve", "--no-record", "--config", str(toml), *port])
    _one_line_error(res.output, res.exit_code, "publish.endpoint 127.0.0.1:5556: not a ZeroMQ endpoint")
    env = {"SBD_INGEST__ENDPOINT": "tcp://127.0.0.1"}
    res = runner.invoke(app, ["serve", "--no-record", "--metrics-port", str(_free_port())], env=env)
    _one_line_error(res.output, res.exit_code, "ingest.endpoint tcp://127.0.0.1: needs host:port")


def test_a_port_over_65535_is_refused_not_wrapped() -> None:
    """A process: the old code bound port 99999 - 65536 and served until killed (the timeout here)."""
    cmd = [SBD, "serve", "--no-record", *_ports(output="tcp://127.0.0.1:99999")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=os.environ.copy())
    _one_line_error(p.stdout + p.stderr, p.returncode, "--output tcp://127.0.0.1:99999: port '99999'")


@pytest.mark.parametrize("which", ["output", "metrics-port", "viewer-port"])
def test_a_port_in_use_is_one_line_and_the_process_ends(which: str, busy_port: int) -> None:
    """A real ``serve`` process: the engine loads, the banner prints, the bind fails: one line, exit 2."""
    value = f"tcp://127.0.0.1:{busy_port}" if which == "output" else str(busy_port)
    extra = ["--viewer", "--metrics-port", "0"] if which == "viewer-port" else []
    cmd = [SBD, "serve", "--no-record", *_ports(**{which: value}), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=os.environ.copy())
    where = value if which == "output" else f"127.0.0.1:{busy_port}"
    line = _one_line_error(p.stdout + p.stderr, p.returncode, f"--{which} {where}: Address already in use")
    assert "addr=" not in line


def test_a_busy_metrics_port_releases_the_bound_input(busy_port: int, signals_kept: None) -> None:
    """In this process: the input socket bound before the metrics port failed is closed again (the
    same port binds at once afterwards), and the one line names the flag."""
    inp = f"tcp://127.0.0.1:{_free_port()}"
    args = ["serve", "--no-record", "--bind-input", *_ports(input=inp, **{"metrics-port": str(busy_port)})]
    res = runner.invoke(app, args)
    _one_line_error(res.output, res.exit_code, f"--metrics-port 127.0.0.1:{busy_port}: Address already")
    import time

    import zmq

    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.linger = 0
    end = time.monotonic() + 5  # libzmq closes a listener on its I/O thread, a moment after close()
    try:
        while True:
            try:
                sock.bind(inp)
                break
            except zmq.ZMQError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
    finally:
        sock.close()


def _recording(folder: Path) -> Path:
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=folder, min_free_bytes=0), Metrics(), sampling=sampling)
    for q in range(2):
        rec.write(RecordItem("raw", "r", q, 0.0, np.full((32, 32), q, np.uint16)))
    rec.close_all()
    return folder / "r.nxs"


def test_replay_publish_to_a_bad_or_busy_output_is_one_line(tmp_path: Path, busy_port: int) -> None:
    rec = str(_recording(tmp_path))
    res = runner.invoke(app, ["replay", rec, "--publish", "--output", "foo", "--wait", "0"])
    _one_line_error(res.output, res.exit_code, "--output foo: not a ZeroMQ endpoint")
    busy = f"tcp://127.0.0.1:{busy_port}"
    res = runner.invoke(app, ["replay", rec, "--publish", "--output", busy, "--wait", "0"])
    _one_line_error(res.output, res.exit_code, f"--output {busy}: Address already in use")
