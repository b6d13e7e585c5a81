"""A stop signal handled right as the staging folder is made leaves no staging folder behind (session 36).

Why: ``replace_folder`` made its staging folder one line before the ``try`` whose ``finally`` removes
it. Python runs a signal handler where a call returns, so a SIGTERM (``sbd-train export``: raised as
``Interrupted``) handled at ``mkdir``'s return left a ``.writing-*`` folder in the engine folder, a full
model's worth once filled by the next run's check: the final CI of session 36 caught it
(``tests/e2e/test_h34_export_sigterm.py``, which signals the moment the folder appears). Here the raise
at ``mkdir``'s return is made deterministic.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbd_stream.engines import folder_swap


def test_a_stop_at_the_staging_folders_making_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "engine"
    target.mkdir()
    (target / "card.json").write_text("{}")
    made = Path.mkdir

    def mkdir_then_signal(self: Path, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)  # type: ignore[arg-type]  # Path.mkdir's own arguments
        if self.name.startswith(folder_swap.STAGE_PREFIX):
            raise KeyboardInterrupt  # the handler's raise, where mkdir returns

    monkeypatch.setattr(Path, "mkdir", mkdir_then_signal)
    with pytest.raises(KeyboardInterrupt):
        folder_swap.replace_folder(target, lambda stage: None, ("card.json",))
    assert sorted(p.name for p in target.iterdir()) == ["card.json"]  # before: a .writing-* folder too
    assert (target / "card.json").read_text() == "{}"
