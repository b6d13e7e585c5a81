"""``info`` lists engines, not hidden folders beside them that hold a ``card.json``.

A killed ``install-quality`` copy leaves ``.NAME.installing``, and an older ``write_engine`` left
``.NAME.writing-*`` / ``.NAME.old-*``; listing them showed a second engine of the same name that
``--model`` cannot pick.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sbd_stream.engines.card import default_engine_root
from sbd_stream.service.offline import environment_info

ENGINE = default_engine_root() / "sbd-unet4-paper-twins"


def test_info_leaves_out_hidden_engine_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ENGINE, tmp_path / ENGINE.name)
    shutil.copytree(ENGINE, tmp_path / f".{ENGINE.name}.writing-abc123")
    shutil.copytree(ENGINE, tmp_path / f".{ENGINE.name}.old-abc123")
    monkeypatch.setenv("SBD_ENGINE_DIR", str(tmp_path))
    listed = [Path(e["path"]).name if "path" in e else e["name"] for e in environment_info()["engines"]]
    assert listed == [ENGINE.name]
