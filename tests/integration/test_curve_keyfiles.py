"""CURVE key files that cannot work, or that others could read or replace: one line at start-up.

The audit found: a malformed ``*.key`` in ``authorized_keys_dir`` crashed ``serve`` with a traceback
(only globbed before the engine loaded, first read by the publisher); a world-writable or
world-readable secret key accepted silently, and ``keygen`` writing the secret before chmod-ing it; a
too-short key blamed on the endpoint ("publish.endpoint tcp://...: Invalid argument").
Real key files (``zmq.auth``), real ``serve`` commands.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import typer
import zmq.auth
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.security import CurveError, generate_keypair, load_keypair

pytestmark = pytest.mark.integration
runner = CliRunner()
PORTS = ["--input", "tcp://127.0.0.1:15793", "--output", "tcp://127.0.0.1:15794", "--metrics-port", "15795"]


def _serve(engine: Path, env: dict[str, str]):
    args = ["serve", *PORTS, "--no-record", "--model", str(engine), "--engine", "onnxruntime"]
    return runner.invoke(app, args, env={"SBD_PUBLISH__CURVE__ENABLED": "true", **env})


def _one_line_error(res, *words: str) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1, (res.output, res.exception)
    assert "Traceback" not in res.output and all(w in lines[0] for w in words), lines
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_malformed_client_key_is_one_line_before_the_engine_loads(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    _, secret = generate_keypair(tmp_path / "svc", "svc")
    clients = tmp_path / "clients"
    generate_keypair(clients, "node")
    (clients / "x.key").write_bytes(os.urandom(100))
    env = {"SBD_PUBLISH__CURVE__SECRET_KEY_FILE": str(secret),
           "SBD_PUBLISH__CURVE__AUTHORIZED_KEYS_DIR": str(clients)}  # fmt: skip
    _one_line_error(_serve(tiny_engine_dir, env), "publish.curve", str(clients / "x.key"))


def test_a_secret_key_others_may_write_is_refused(tmp_path: Path, tiny_engine_dir: Path) -> None:
    _, secret = generate_keypair(tmp_path, "svc")
    secret.chmod(0o666)
    with pytest.raises(CurveError, match="writable by group or others"):
        load_keypair(secret)
    env = {"SBD_PUBLISH__CURVE__SECRET_KEY_FILE": str(secret)}
    _one_line_error(_serve(tiny_engine_dir, env), "publish.curve", "writable by group or others", "chmod 600")
    secret.chmod(0o620)  # group-writable alone is refused as well, as ssh does
    with pytest.raises(CurveError, match="writable"):
        load_keypair(secret)


def test_a_secret_key_others_may_read_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = generate_keypair(tmp_path, "svc")
    with caplog.at_level(logging.WARNING, logger="sbd_stream.security"):
        load_keypair(secret)
        assert "readable" not in caplog.text  # 0600: nothing to say
        secret.chmod(0o644)
        assert load_keypair(secret) == load_keypair(secret)  # still usable
    warned = [r for r in caplog.records if "readable by group or others" in r.getMessage()]
    assert len(warned) == 1 and "chmod 600" in warned[0].getMessage()


def test_keygen_creates_the_secret_private_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret was written with the process umask and chmod-ed afterwards: readable in between."""
    seen: dict[str, int] = {}
    create = zmq.auth.create_certificates

    def watched(directory: str, name: str, metadata: object = None) -> tuple[str, str]:
        public, secret = create(directory, name, metadata)
        seen["at_creation"] = _mode(Path(secret))
        return public, secret

    monkeypatch.setattr(zmq.auth, "create_certificates", watched)
    old = os.umask(0o002)  # a permissive umask, as on many desktops
    try:
        public, secret = generate_keypair(tmp_path, "svc")
    finally:
        os.umask(old)
    assert seen["at_creation"] & 0o077 == 0, oct(seen["at_creation"])
    assert (_mode(secret), _mode(public)) == (0o600, 0o644)
    assert os.umask(old) == old  # the process umask is given back


def test_a_short_key_is_named_not_blamed_on_the_endpoint(tmp_path: Path, tiny_engine_dir: Path) -> None:
    short = tmp_path / "short.key_secret"
    short.write_text('metadata\ncurve\n    public-key = "short"\n    secret-key = "alsoshort"\n')
    short.chmod(0o600)
    with pytest.raises(CurveError, match="not a CURVE key"):
        load_keypair(short)
    line = _one_line_error(_serve(tiny_engine_dir, {"SBD_PUBLISH__CURVE__SECRET_KEY_FILE": str(short)}))
    assert str(short) in line and "Invalid argument" not in line and "publish.endpoint" not in line


def test_a_curve_error_while_the_service_starts_is_one_line() -> None:
    """Whatever CURVE refuses once the service opens its sockets (after the up-front checks) ends the
    command in one line, exit 2, not a traceback from the publisher."""
    from sbd_stream.cli.options import Flags
    from sbd_stream.cli.service_start import starting

    with pytest.raises(typer.Exit) as e, starting(Flags()):
        raise CurveError("libzmq refused the key pair")
    assert e.value.exit_code == 2


def test_a_path_setting_with_a_nul_is_one_line(tmp_path: Path, tiny_engine_dir: Path) -> None:
    """``record.directory = "rec/a\\u0000b"`` (valid TOML) was a traceback from the recorder."""
    toml = tmp_path / "s.toml"
    toml.write_text('[record]\ndirectory = "rec/a\\u0000b"\n')
    args = [
        "serve",
        *PORTS,
        "--config",
        str(toml),
        "--model",
        str(tiny_engine_dir),
        "--engine",
        "onnxruntime",
    ]
    res = runner.invoke(app, args)
    _one_line_error(res, "record.directory", "control characters")
    env = {"SBD_PUBLISH__CURVE__SECRET_KEY_FILE": "a\nb"}
    _one_line_error(_serve(tiny_engine_dir, env), "secret_key_file", "control characters")
