"""``--record-dir ''`` (``--record-dir "$DIR"`` with DIR unset) is refused, naming the flag.

Why: typer made ``Path("")`` of it, which is ``.``: ``serve``, ``replay`` and ``demo`` recorded into the
working folder without a word, while the settings file and ``SBD_RECORD__DIRECTORY=`` refuse the same
empty value (tests/unit/test_h30_deploy_config.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from sbd_stream.cli.options import folder_named


@pytest.mark.parametrize("command", [["serve"], ["replay", "rec.nxs"], ["demo"]])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_record_dir_is_refused_before_anything_runs(
    command: list[str], empty: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBD_") or k == "SBD_ENGINE_DIR"}
    r = subprocess.run(
        [sys.executable, "-m", "sbd_stream", *command, "--record-dir", empty],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--record-dir" in r.stderr and "empty" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing recorded into the working folder


def test_a_named_folder_and_a_written_out_dot_pass() -> None:
    assert folder_named("rec/today") == Path("rec/today")
    assert folder_named(".") == Path(".")
    with pytest.raises(typer.BadParameter):
        folder_named("")
