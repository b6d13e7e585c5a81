"""`serve` on settings that cannot work here ends in one line before anything binds (each was a
90-line traceback: a GPU device on a CPU box, unreadable CURVE keys found only after the engine loaded),
and the documented ``SBD_INGEST__INPUT__SOCKET_TYPE=pull`` alone is the wire-v1 PULL input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import InputSocket, load_settings

runner = CliRunner()
PORTS = ["--input", "tcp://127.0.0.1:15790", "--output", "tcp://127.0.0.1:15791", "--metrics-port", "15792"]


def _serve(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["serve", *PORTS, "--no-record", *args], env=env)


def _one_line_error(res, *words: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "Traceback" not in res.output and all(w in lines[0] for w in words), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize(
    "args", [["--device", "cuda"], ["--engine", "tensorrt"], ["--devices", "cpu,cuda:7"]]
)
def test_a_device_this_machine_lacks_is_one_line(args: list[str]) -> None:
    extra = ["--workers", "2"] if "--devices" in args else []
    _one_line_error(_serve(*args, *extra), "engine:")


def test_unreadable_curve_keys_are_one_line_before_the_engine_loads(tmp_path: Path) -> None:
    env = {
        "SBD_PUBLISH__CURVE__ENABLED": "true",
        "SBD_PUBLISH__CURVE__SECRET_KEY_FILE": "/no/such.key_secret",
    }
    _one_line_error(_serve(env=env), "publish.curve", "cannot read key pair")
    (tmp_path / "empty").mkdir()
    from sbd_stream.security import generate_keypair

    _, secret = generate_keypair(tmp_path, "svc")
    env = {
        "SBD_PUBLISH__CURVE__ENABLED": "true", "SBD_PUBLISH__CURVE__SECRET_KEY_FILE": str(secret),
        "SBD_PUBLISH__CURVE__AUTHORIZED_KEYS_DIR": str(tmp_path / "empty"),
    }  # fmt: skip
    _one_line_error(_serve(env=env), "authorized_keys_dir")


def test_socket_type_alone_in_the_environment_or_toml_is_the_default_dialect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/scale-out-nodes.md: ``[ingest.input] socket_type = "pull"`` or the env variable alone."""
    monkeypatch.setenv("SBD_INGEST__INPUT__SOCKET_TYPE", "pull")
    s = load_settings(None, {})
    assert s.ingest.input.dialect == "wire-v1" and s.ingest.input.socket_type is InputSocket.pull
    monkeypatch.delenv("SBD_INGEST__INPUT__SOCKET_TYPE")
    toml = tmp_path / "s.toml"
    toml.write_text('[ingest.input]\nsocket_type = "pull"\n')
    assert load_settings(toml, {}).ingest.input.socket_type is InputSocket.pull
    toml.write_text("[ingest.input]\nseries_timeout_s = 3\n")  # a DECTRIS setting without its dialect
    with pytest.raises(ValueError, match="series_timeout_s"):
        load_settings(toml, {})


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "--metrics-port", "70000"], "error: --metrics-port: Input should be less than"),
        (["serve", "--viewer", "--viewer-port", "70000"], "error: --viewer-port: Input should be less than"),
    ],
)
def test_a_bad_port_flag_is_named_by_its_flag(args: list[str], named: str, tmp_path: Path) -> None:
    """Named by the setting (``viewer.port: ...``) before audit h29, a flag the user never typed; the
    same value from a TOML file is still named by its setting."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and named in res.output, res.output
    toml = tmp_path / "s.toml"
    toml.write_text("[metrics]\nport = 70000\n")
    res = runner.invoke(app, ["serve", "--config", str(toml)])
    assert res.exit_code == 2 and "error: metrics.port: Input should be" in res.output, res.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--engine", "tensorrrt"], ["--engine:", "tensorrrt"]),
        (["--devices", "cpu,gpu", "--workers", "2"], ["--devices (entry 2):", "gpu"]),
    ],
)
def test_a_misspelt_engine_or_device_names_the_flag_typed(args: list[str], words: list[str]) -> None:
    """Checked with the settings since audit h30 (they reached the engine load, which named no setting);
    the line names the flag the user typed, not ``denoise.engine`` / ``denoise.devices.1``."""
    _one_line_error(_serve(*args), *words)


def test_the_config_options_leave_reading_the_file_to_the_settings_loader() -> None:
    """``readable=False``: click's own check of an unreadable ``--config`` (not root) printed its usage box,
    not one ``error:`` line; the settings loader reports it (``settings: [Errno 13] ...``). As root every
    file is readable, so the option itself is checked, on every command that has one."""
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    seen = 0
    for name, cmd in commands.items():
        for p in cmd.params:
            if "--config" in getattr(p, "opts", []):
                seen += 1
                assert p.type_descriptor.parameter_info.readable is False, name
    assert seen >= 3  # serve, replay, info
