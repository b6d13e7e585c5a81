"""``[ingest.input]`` without ``dialect`` is the default wire-v1, from every layer (file, environment,
flags), as when the table is absent: ``socket_type = "pull"`` alone was refused ("Unable to extract
tag"), and after its fix no test held it (audit 27, mutant CF2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbd_stream.config import InputDialect, InputSocket, load_settings


def _check(settings) -> None:
    assert settings.ingest.input.dialect == InputDialect.wire_v1.value
    assert settings.ingest.input.socket_type == InputSocket.pull


def test_flags_without_a_dialect_give_wire_v1() -> None:
    _check(load_settings(overrides={"ingest": {"input": {"socket_type": "pull"}}}))


def test_a_file_table_without_a_dialect_gives_wire_v1(tmp_path: Path) -> None:
    toml = tmp_path / "sbd.toml"
    toml.write_text('[ingest.input]\nsocket_type = "pull"\n')
    _check(load_settings(toml))


def test_the_environment_without_a_dialect_gives_wire_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBD_INGEST__INPUT__SOCKET_TYPE", "pull")
    _check(load_settings())
