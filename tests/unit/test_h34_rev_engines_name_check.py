"""The engine-folder check (run before ``train --engine-dir``, ``fov-study --train``, ``gpu-recipe``)
refuses a folder whose name cannot name an engine, before any training.

Found (session 34 review): ``--engine-dir .hidden`` (or ``..``, whose name was '..') passed the check;
the card, named after the folder, was refused only when written: after the training, as
"error: --name: String should match pattern ...", an option the user never gave.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.train.export import EngineDirTaken, check_engine_dir


@pytest.mark.parametrize("folder", [".hidden", "new/.."])
def test_a_folder_whose_name_cannot_name_an_engine_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new").mkdir()
    given = Path(folder)
    name = ".hidden" if folder == ".hidden" else given.name  # '..' as the old callers named it
    with pytest.raises(EngineDirTaken, match=r"cannot name an engine .*; choose another folder$"):
        check_engine_dir(given, name)
