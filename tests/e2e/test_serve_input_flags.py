"""`serve`'s input flags (`--dialect`, `--socket-type`, `--series-timeout`) refused under the flag's name.

docs/service.md ("Settings"): an invalid value is named as the flag when a flag gave it. The input
settings are a tagged union, so pydantic named them by an internal path with the dialect in it:
``--series-timeout 5`` on the default wire-v1 input read ``ingest.input.wire-v1.series_timeout_s: Extra
inputs are not permitted``, neither the flag nor that it is a DECTRIS setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app

runner = CliRunner()
PORTS = ["--input", "tcp://127.0.0.1:15793", "--output", "tcp://127.0.0.1:15794", "--metrics-port", "15795"]


def _error(*args: str, env: dict[str, str] | None = None) -> str:
    """The one ``error:`` line of a refused ``serve`` (exit 2, before anything binds or loads)."""
    res = runner.invoke(app, ["serve", *PORTS, "--no-record", *args], env=env)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("extra", [[], ["--socket-type", "pull"]], ids=["default", "pull"])
def test_series_timeout_on_wire_v1_names_the_flag_and_what_it_applies_to(extra: list[str]) -> None:
    line = _error("--series-timeout", "5", *extra)
    assert line.startswith("error: --series-timeout: applies to a DECTRIS input only"), line
    assert "dectris-stream-v1" in line and "this input is wire-v1" in line and "(got 5.0)" in line
    assert "ingest.input" not in line.split("(", 1)[0] and "Extra inputs" not in line


def test_a_bad_series_timeout_on_dectris_names_the_flag() -> None:
    line = _error("--dialect", "dectris-stream-v1", "--series-timeout", "-1")
    assert line == "error: --series-timeout: Input should be greater than 0 (got -1.0)", line


def test_bad_dialect_and_socket_type_name_their_flags() -> None:
    line = _error("--dialect", "bogus")
    assert line.startswith("error: --dialect: should be one of wire-v1, dectris-stream-v1, dectris-stream-v2")
    assert "(got 'bogus')" in line
    assert _error("--socket-type", "bogus").startswith(
        "error: --socket-type: Input should be 'pull' or 'sub'"
    )


def test_the_same_setting_from_the_environment_or_toml_is_named_as_the_setting(tmp_path: Path) -> None:
    """No flag typed: the setting's own name (without the dialect tag), and the same reason."""
    line = _error(env={"SBD_INGEST__INPUT__SERIES_TIMEOUT_S": "3"})
    assert line.startswith("error: ingest.input.series_timeout_s: applies to a DECTRIS input only"), line
    toml = tmp_path / "s.toml"
    toml.write_text('[ingest.input]\ndialect = "wire-v1"\nseries_timeout_s = 3\n')
    line = _error("--config", str(toml))
    assert line.startswith("error: ingest.input.series_timeout_s: applies to a DECTRIS input only"), line
