"""`sbd-train install-quality`: an engine becomes the quality engine (what offline work picks on a GPU)
only through the checks of tests/e2e/test_engine_quality.py (training/evaluate/quality_gate.py)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from conftest import make_tiny_engine
from typer.testing import CliRunner

from sbd_stream.engines.card import (
    CARD_FILE,
    DEFAULT_ENGINE,
    QUALITY_ENGINE,
    default_engine_root,
    offline_engine,
)
from training.cli import app


def test_an_engine_below_the_margins_is_refused_naming_each_failed_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("SBD_ENGINE_DIR", str(root))
    engine = make_tiny_engine(tmp_path / "candidate")  # untrained: far below the blur
    res = CliRunner().invoke(app, ["install-quality", str(engine)], env={"SBD_TRACEBACK": ""})
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {engine} not installed as {QUALITY_ENGINE}: support: engine only ")
    assert "over the oracle low-pass (need 3.0)" in lines[0] and "particle: engine only " in lines[0]
    assert "(need 3.5)" in lines[0]
    assert list(root.iterdir()) == []  # nothing installed, not even half
    assert offline_engine(gpu=True, root=root) == DEFAULT_ENGINE


@pytest.mark.slow
def test_an_engine_that_passes_is_installed_whole_under_the_quality_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = default_engine_root() / DEFAULT_ENGINE  # passes the same checks in test_engine_quality
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("SBD_ENGINE_DIR", str(root))
    res = CliRunner().invoke(app, ["install-quality", str(shipped)], env={"SBD_TRACEBACK": ""})
    assert res.exit_code == 0, res.output
    assert f"installed {shipped} as {root / QUALITY_ENGINE}" in res.stdout
    dest = root / QUALITY_ENGINE
    assert not filecmp.dircmp(shipped, dest).diff_files and (dest / CARD_FILE).is_file()
    assert [p.name for p in root.iterdir()] == [QUALITY_ENGINE]  # no temporary folder left
    assert offline_engine(gpu=True, root=root) == QUALITY_ENGINE
    again = CliRunner().invoke(app, ["install-quality", str(shipped)], env={"SBD_TRACEBACK": ""})
    assert again.exit_code == 2 and "exists: move it away first" in again.stderr
