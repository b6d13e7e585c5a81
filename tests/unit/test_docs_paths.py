"""Every ``training.<module>`` path the README and docs/*.md name imports (docs once named
``training.dataset``, ``training.splits`` and ``training.augment``, which had moved)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NOT_MODULES = {"init_from", "interrupted", "steps_total", "wall_s", "md"}
"""``training.<key>`` that are engine-card keys (the card's ``training`` section) or docs/training.md."""


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_training_module_path_in_the_docs_imports() -> None:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {
        (p.name, m)
        for p in texts
        for m in re.findall(r"\btraining(?:\.[A-Za-z_]\w*)+", p.read_text())
        if m.split(".")[1] not in NOT_MODULES
    }
    assert found and [f for f in sorted(found) if not _resolves(f[1])] == []
