"""`sbd-stream emulate` with a value it cannot use: one line `error: ...` naming the flag, exit status 2.

Why: a zero or 16385-pixel side, a negative seed, an `--acq` the wire format refuses, `inf` seconds or
degrees, an unknown `--event`, a malformed or busy `--endpoint` each ended in a 30-80 line traceback
(exit 1), some only after the banner; `:99999` bound another port (modulo 65536) and `--acq ""` became
a random id, both silently. Real sockets on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import pytest
import zmq
from conftest import free_port
from typer.testing import CliRunner

from sbd_stream.cli.app import app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]  # real sockets; never a hang

runner = CliRunner()


def _free_port() -> int:
    """conftest.free_port: drawn outside the kernel's ephemeral range and checked on every address."""
    return free_port()


def _emulate(*args: str, endpoint: str | None = None):
    ep = endpoint if endpoint is not None else f"tcp://127.0.0.1:{_free_port()}"
    base = ["emulate", "--endpoint", ep, "--wait", "0", "--frames", "2", "--shape", "64x64"]
    return runner.invoke(app, [*base, *args])


def _one_line_error(res, *words: str) -> str:
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and all(w in errors[0] for w in words), errors
    return errors[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--shape", "0x64"], ["--shape", "1 to 16384"]),
        (["--shape", "-5x64"], ["--shape", "1 to 16384"]),
        (["--shape", "16385x4"], ["--shape", "1 to 16384"]),
        (["--seed", "-1"], ["--seed", "greater than or equal to 0"]),
        (["--acq", ""], ["--acq", "1 to 256 printable"]),
        (["--acq", "a" * 300], ["--acq", "1 to 256 printable"]),
        (["--acq", "bad\x01id"], ["--acq", "printable"]),
        (["--wait", "inf"], ["--wait", "finite"]),
        (["--drift", "inf"], ["--drift", "finite"]),
        (["--drift-angle", "nan"], ["--drift-angle", "finite"]),
        (["--drift-angle", "inf"], ["--drift-angle", "finite"]),
        (["--focus-rate", "nan"], ["--focus-rate", "finite"]),
        (["--focus-rate", "inf"], ["--focus-rate", "finite"]),
        (["--event", "explode", "--event-frame", "1"], ["--event", "'vanish' or 'hop'"]),
        (["--pixel-size", "inf"], ["--pixel-size", "finite"]),
        (["--dose", "inf"], ["--dose", "finite"]),
        (["--counts-per-px", "inf"], ["--counts-per-px", "finite"]),
        (["--dtype", "uint8", "--counts-per-px", "300"], ["does not fit uint8", "--dtype uint16"]),
    ],
)
def test_a_bad_value_is_one_line(args: list[str], words: list[str]) -> None:
    _one_line_error(_emulate(*args), *words)


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("foo", "not a ZeroMQ endpoint"),
        ("", "not a ZeroMQ endpoint"),
        ("tcp://256.1.1.1:5555", "256.1.1.1 is not an IP address"),
        ("tcp://127.0.0.1:99999", "port '99999' is not 1 to 65535"),
        ("tcp://127.0.0.1", "needs host:port"),
    ],
)
def test_a_malformed_endpoint_is_one_line(endpoint: str, why: str) -> None:
    _one_line_error(_emulate(endpoint=endpoint), "--endpoint", why)


def test_connecting_needs_a_port_not_a_wildcard() -> None:
    _one_line_error(_emulate("--connect", endpoint="tcp://127.0.0.1:*"), "--endpoint", "port '*'")


def test_an_endpoint_in_use_is_one_line_naming_it() -> None:
    ctx = zmq.Context.instance()
    holder = ctx.socket(zmq.PUB)
    holder.linger = 0
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        ep = f"tcp://127.0.0.1:{port}"
        line = _one_line_error(_emulate(endpoint=ep), f"--endpoint {ep}", "Address already in use")
        assert "addr=" not in line
    finally:
        holder.close()


def test_odd_but_valid_values_still_send() -> None:
    """What the wire format takes is sent as given: a spaced acq, the largest seed numpy takes, a
    1-pixel side, a shape larger than a K2's side."""
    res = _emulate("--acq", "with space", "--seed", str(2**63), "--shape", "1x4000", "--rate", "0")
    assert res.exit_code == 0, res.output
    assert '"acq": "with space", "frames_sent": 2' in res.output
