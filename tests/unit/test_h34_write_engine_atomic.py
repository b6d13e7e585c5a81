"""``write_engine`` is all or nothing: a failure midway leaves the previous engine as it was (and no
temporary folder), a rewrite keeps the folder's other files and never leaves an old model file beside a
new card.

Found (session 34, audit): it wrote model.pt, then model.onnx, then card.json straight into the folder,
so an ONNX export that failed (or Ctrl-C, a full disk) left the new weights under the old card: checksums
that no longer matched, the previous engine lost. Failures here are real ones: a network whose forward
raises, so that the real ONNX export fails (or is interrupted) after model.pt was saved.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from sbd_stream.compute.model import UNet
from sbd_stream.engines.card import EngineCard, load_card, load_torch_model, write_engine


class _ExportFails(UNet):
    """A network that saves (its state dict is a UNet's) but cannot be run, so ONNX export fails."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(scales=1, channels=4)
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def _card() -> EngineCard:
    return EngineCard(name="eng", scales=1, channels=4)


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (relative path: bytes, None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    """A written engine with a researcher's file beside it."""
    torch.manual_seed(0)
    path = tmp_path / "eng"
    write_engine(path, UNet(scales=1, channels=4), _card())
    (path / "notes.txt").write_text("kept\n")
    return path


@pytest.mark.parametrize(
    "error", [RuntimeError("no export"), KeyboardInterrupt()], ids=["onnx-fails", "ctrl-c"]
)
def test_a_failure_midway_leaves_the_previous_engine_and_no_temporary_folder(
    engine: Path, error: BaseException
) -> None:
    before = _tree(engine)
    with pytest.raises(type(error)):
        write_engine(engine, _ExportFails(error), _card())
    assert _tree(engine) == before  # old weights, ONNX and card, notes kept: not new weights under old card
    assert sorted(p.name for p in engine.parent.iterdir()) == ["eng"]  # no temporary folder behind
    load_torch_model(engine)  # checksums still match


def test_a_rewrite_keeps_other_files_and_drops_a_model_file_the_new_card_does_not_list(
    engine: Path, tmp_path: Path
) -> None:
    (engine / "plots").mkdir()
    (engine / "plots" / "loss.txt").write_text("a plot\n")
    os.chmod(engine, 0o751)
    link = tmp_path / "link"  # the engine reached through a symbolic link: the link stays one
    link.symlink_to(engine, target_is_directory=True)
    torch.manual_seed(1)
    card = write_engine(link, UNet(scales=1, channels=4), _card(), onnx=False)
    assert link.is_symlink() and link.resolve() == engine
    tree = _tree(engine)
    assert set(tree) == {"card.json", "model.pt", "notes.txt", "plots", "plots/loss.txt"}, set(tree)
    # a model.onnx of the old weights beside a card that lists none: the mix this refuses to leave
    assert tree["notes.txt"] == b"kept\n" and tree["plots/loss.txt"] == b"a plot\n"
    assert load_card(engine).checksums == card.checksums and set(card.checksums) == {"model.pt"}
    load_torch_model(engine)
    assert stat.S_IMODE(engine.stat().st_mode) == 0o751
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng", "link"]
