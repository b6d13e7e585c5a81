"""docs/training.md states the detector engine's tiling as its card has it (it said "tile 256, margin 0,
overlap 0" while the card said 512 / 48 / 32: the whole-frame tile comes from ``Denoiser.plan``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_detector_engine_tiling_in_the_docs_is_the_cards() -> None:
    text = (ROOT / "docs" / "training.md").read_text()
    section = text[text.index("## Detector engine") :]
    section = section[: section.index("\n## ", 1)]
    said = re.search(r"the card says \*\*tile (\d+), margin (\d+), overlap (\d+)\*\*", section)
    assert said, "docs/training.md, Detector engine: state the card's tiling"
    card = json.loads((ROOT / "engines" / "sbd-unet4-detector" / "card.json").read_text())["tiling"]
    assert tuple(map(int, said.groups())) == (card["tile"], card["margin"], card["overlap"])
    assert "Denoiser.plan" in section and "tile 256, margin 0" not in section
