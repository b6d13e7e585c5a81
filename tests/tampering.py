"""Engine folders damaged on purpose, as an auditor did: shared by the engine-artefact audit tests.

Each helper edits a real engine (``conftest.make_tiny_engine``) the way an attacker or a bad export
would, and ``rehash`` makes the card's checksums match the damage, so what is tested is the check
after the checksum.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx


def sha(path: Path) -> str:
    """SHA-256 of a file, as cards state it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clone(src: Path, tmp_path: Path, name: str = "broken") -> Path:
    """A copy of the engine ``src`` named ``name`` (folder and card), to damage."""
    dst = tmp_path / name
    shutil.copytree(src, dst)
    edit_card(dst, name=name)
    return dst


def edit_card(engine: Path, **fields: Any) -> None:
    card = json.loads((engine / "card.json").read_text())
    card.update(fields)
    (engine / "card.json").write_text(json.dumps(card))


def rehash(engine: Path) -> None:
    """The card's checksums made to match the (damaged) files: what an attacker or a bad export does."""
    card = json.loads((engine / "card.json").read_text())
    card["checksums"] = {f: sha(engine / f) for f in card["checksums"] if (engine / f).is_file()}
    (engine / "card.json").write_text(json.dumps(card))


def drop(engine: Path, filename: str) -> None:
    (engine / filename).unlink()
    card = json.loads((engine / "card.json").read_text())
    del card["checksums"][filename]
    (engine / "card.json").write_text(json.dumps(card))


def edit_onnx(engine: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    """``change`` applied to the engine's ONNX graph, checksums made to match."""
    model = onnx.load(engine / "model.onnx")
    change(model)
    onnx.save(model, engine / "model.onnx")
    rehash(engine)


class Payload:
    """An object whose unpickling would run code: what ``weights_only`` must never load."""

    def __reduce__(self):  # pragma: no cover - never executed when loading is safe
        return (print, ("pwned",))
